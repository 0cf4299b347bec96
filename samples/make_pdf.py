"""Regenerate samples/incident-runbook.pdf from the text below.

Run from the repository root: ``python samples/make_pdf.py``; it works before the project
is installed (the writer is in tests/). Each page covers one topic, so questions about it
have a known page number (1-based, as in our citations); samples/questions.jsonl relies on
that.
"""

import sys
from pathlib import Path

# The writer is a test fixture (tests/pdfwrite.py), not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pdfwrite import write_pdf

OUTPUT = Path(__file__).resolve().parent / "incident-runbook.pdf"
TITLE = "Kestrel Harbor Systems - Incident Runbook"

PAGE_1 = """\
Kestrel Harbor Systems - Incident Runbook
Page 1: Incident severity levels

This runbook tells engineers how to handle production incidents in Lantern, our
shipment tracking platform. Start by choosing a severity level for the incident.

SEV1: Lantern is down or losing data for many customers. Customers cannot track
shipments or log in.
SEV2: An important feature is broken or very slow, but a workaround exists.
SEV3: A minor problem that affects few customers and can wait for working hours.

Every SEV1 and SEV2 incident gets an incident commander. The incident commander
coordinates the response, decides who works on what, and keeps customers informed.
The incident commander does not fix the problem personally.

During a SEV1 incident, the incident commander must update the status page
every 30 minutes, even when there is no news. Customer support links to the status
page from every reply it sends about the outage.

After a SEV1 or SEV2 incident is resolved, the incident commander schedules a
blameless review meeting within five working days and writes up the timeline, the
root cause and the follow-up actions in a review document.
"""

PAGE_2 = """\
Kestrel Harbor Systems - Incident Runbook
Page 2: On-call duty and escalation

The on-call rotation has a primary and a secondary engineer. The rotation changes
every Monday at 10:00, and the outgoing engineer hands over open issues in the
incident channel.

Alerts are sent as pages by the Foghorn alerting service to the phone of the primary
on-call engineer. The on-call engineer must acknowledge a page within 15 minutes.
If the primary engineer does not acknowledge the page in time, Foghorn escalates it
to the secondary engineer automatically.

After acknowledging a page, open a thread in the #incident-bridge chat channel,
describe what you see, and choose a severity level as explained on page 1. For a
SEV1, page the engineering manager on duty as well.

While on call, stay within reach of your laptop and a stable internet connection.
If you cannot cover your shift, swap it with a colleague and update the schedule in
Foghorn before the shift starts. On-call engineers receive an allowance for every
week on call, paid with the monthly salary.
"""

PAGE_3 = """\
Kestrel Harbor Systems - Incident Runbook
Page 3: Database failover

Lantern stores its shipment data in the PostgreSQL cluster called ledger-db, which
has one primary server and one standby server in a second data center. Fail over
only when the primary server is down and cannot be restarted.

Database failover steps:

1. Confirm that the primary is unreachable with the command harbor-db status.
2. Announce the failover in the #incident-bridge channel before you continue.
3. Stop the Lantern API workers so that no writes arrive during the switch.
4. To fail over the database, promote the standby with the command harbor-db promote.
5. Point the ledger-db DNS record at the new primary server.
6. Start the Lantern API workers again and check the error rate on the dashboard.
7. Rebuild a new standby from the new primary within one working day.

Never promote the standby while the old primary is still accepting writes, because
the two servers would then hold different data. If you are unsure, ask the database
team before step 4.
"""


def main() -> None:
    write_pdf(OUTPUT, [PAGE_1, PAGE_2, PAGE_3], title=TITLE)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()

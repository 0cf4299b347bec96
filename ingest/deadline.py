"""A parse process's deadline as the job inside it sees it: slow steps ask for their time.

The parent (ingest/worker.py) kills a parse process at its deadline, `ingest.parse_timeout_s`
after it started. How long OCR takes is known only inside, once the pages are counted, so
each page to OCR asks for `ingest.ocr_seconds_per_page` more before it starts: `extend`
sends that on the result pipe (the parent moves the deadline) and raises the process's own
CPU limit to match. `left_s` is the time the current step may still take.

One job runs per parse process, so the deadline is the process's, like its rlimits: the
worker installs it before the job starts. Where no worker installed one (a parser called in
this process, as tests do) there is no deadline: `extend` does nothing and `left_s` is
unbounded.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from multiprocessing.connection import Connection

# The parent's message for "give this job more seconds"; the final message is "ok" or "error".
EXTEND = "extend"


class _Deadline:
    def __init__(self, conn: Connection, timeout_s: float) -> None:
        self.conn = conn
        self.ends = time.monotonic() + timeout_s

    def extend(self, seconds: float, pages: int) -> None:
        self.ends += seconds
        self.conn.send((EXTEND, seconds, pages))
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if soft != resource.RLIM_INFINITY:
            raised = soft + math.ceil(seconds)
            if hard != resource.RLIM_INFINITY:
                raised = min(raised, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_CPU, (raised, hard))


_current: list[_Deadline] = []


def install(conn: Connection, timeout_s: float) -> None:
    """Called by the parse process before its job: the job's time starts now."""
    _current[:] = [_Deadline(conn, timeout_s)]


def extend(seconds: float, pages: int) -> None:
    """Ask for `seconds` more, for a step that will have OCR'd `pages` pages of the file."""
    for deadline in _current:
        deadline.extend(seconds, pages)


def left_s() -> float:
    """Seconds until the parent kills this process (inf outside a parse process)."""
    return min((d.ends - time.monotonic() for d in _current), default=math.inf)

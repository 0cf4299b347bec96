"""The browser page, driven in headless Chromium against the real service."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network: background services would otherwise retry connections forever.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip(
        "chromium is not installed (make test installs it on Linux)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI must have chromium: the Makefile's test target installs it"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server + "/")
        yield page
        browser.close()


def test_ask_streams_the_answer_and_opens_a_citation(page, tmp_path: Path) -> None:
    page.fill("#question", "Which command promotes the standby database during a failover?")
    page.click("#go")
    page.wait_for_selector("#sources li", timeout=180_000)
    assert page.inner_text("#answer").strip()
    first = page.locator("#sources li").first
    assert "samples/incident-runbook.pdf, page 3" in first.inner_text()
    first.locator("summary").click()
    assert "harbor-db promote" in first.locator(".passage").inner_text()
    assert "tokens/s" in page.inner_text("#status")
    page.screenshot(path=str(ARTIFACTS / "ui-answer.png"), full_page=True)


def test_status_panel_shows_the_doctor_checks(page) -> None:
    page.click("#health summary")
    page.wait_for_selector("#checks li", timeout=60_000)
    text = page.inner_text("#checks")
    assert "model fit" in text and "mlx backend" in text
    assert "weights" in page.inner_text("#plan") and "budget" in page.inner_text("#plan")
    # Which engine runs and why, from /api/plan; /ready's line names it too.
    assert "auto:" in page.inner_text("#choice") and "auto:" in page.inner_text("#engine")
    assert "tokens/s" in page.inner_text("#speed")
    page.screenshot(path=str(ARTIFACTS / "ui-status.png"), full_page=True)


def test_model_output_and_documents_render_as_inert_text(page) -> None:
    hostile = (
        "<img src=x onerror=\"document.title='owned'\"><script>document.title='owned'</script>"
    )
    page.evaluate(
        """(text) => handle("done", JSON.stringify({
            answer: text,
            citations: [{n: 1, source: text, page: 1, heading: "", text: text, score: 1}],
            usage: {prompt_tokens: 1, completion_tokens: 0, ttft_s: 0, tokens_per_s: 0}
        }))""",
        hostile,
    )
    assert page.inner_text("#answer") == hostile
    assert page.locator("#answer img, #sources img, #answer script, #sources script").count() == 0
    assert page.title() != "owned"


def test_a_sentence_its_sources_do_not_support_is_flagged(page) -> None:
    invented = 'The command "promote-server-backup" is used to promote the standby database [1].'
    right = "Run harbor-db promote on the standby [1]."
    page.evaluate(
        """([invented, right]) => handle("done", JSON.stringify({
            answer: right + " " + invented,
            citations: [{n: 1, source: "r.pdf", page: 3, heading: "", text: "x", score: 1}],
            sentences: [
                {text: right, supported: true, citations: [1], span: null},
                {text: invented, supported: false, citations: [1], span: null}
            ],
            usage: {prompt_tokens: 1, completion_tokens: 0, ttft_s: 0, tokens_per_s: 0}
        }))""",
        [invented, right],
    )
    assert page.locator("#answer .unsupported").all_inner_texts() == [invented]
    assert "not found in the cited sources" in page.inner_text("#answer")
    assert page.inner_text("#answer").startswith(right + " " + invented)


HOSTILE = "<img src=x onerror=\"document.title='owned'\"><script>document.title='owned'</script>"
# A file name has no "/" to survive (the service keeps only a name's last path part).
HOSTILE_NAME = "<img src=x onerror=\"document.title='owned'\">.md"
KESTREL = f"# Kestrel project\nThe Kestrel project codename is Silverfin. {HOSTILE}\n"


def test_upload_shows_progress_then_the_answer_cites_it(page) -> None:
    # Its own collection, so the sample collection other tests ask stays as it was.
    page.fill("#collection", "ui-uploads")
    page.dispatch_event("#collection", "change")
    page.click("#docs summary")
    page.set_input_files(
        "#files",
        files=[
            {"name": HOSTILE_NAME, "mimeType": "text/markdown", "buffer": KESTREL.encode()},
            {"name": "broken.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 no"},
        ],
    )
    page.click("#send")
    page.wait_for_selector("#jobstatus:text-matches('^Upload ')", timeout=120_000)
    rows = page.locator("#uploads li")
    assert rows.nth(0).locator(".state").inner_text() == "indexed"
    assert rows.nth(0).locator("progress").get_attribute("value") == "1"
    assert rows.nth(1).locator(".state").inner_text().startswith("failed (malformed)")
    assert "1 of 2 file(s) ingested" in page.inner_text("#jobstatus")
    page.wait_for_selector("#doclist li")
    assert page.locator("#doclist .name").first.inner_text() == HOSTILE_NAME
    page.screenshot(path=str(ARTIFACTS / "ui-upload.png"), full_page=True)

    page.fill("#question", "What is the Kestrel project codename?")
    page.click("#go")
    page.wait_for_selector("#sources li", timeout=180_000)
    assert page.inner_text("#answer").strip()
    first = page.locator("#sources li").first
    assert HOSTILE_NAME in first.locator("summary").inner_text()
    first.locator("summary").click()
    passage = first.locator(".passage").inner_text()
    assert "Silverfin" in passage and HOSTILE in passage
    # The document's markup and its file name were shown as text, never run.
    assert page.locator("img, script:not(:first-of-type), iframe").count() == 0
    assert page.title() != "owned"
    page.screenshot(path=str(ARTIFACTS / "ui-upload-answer.png"), full_page=True)


def test_a_follow_up_question_is_asked_in_its_conversation(page) -> None:
    first_question = page.inner_text("#asked")
    first_answer = page.inner_text("#answer")
    sent: list[dict] = []
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json) if r.url.endswith("/api/ask") else None,
    )
    page.fill("#question", "Which project has that codename?")
    page.click("#go")
    page.wait_for_selector("#go:enabled", timeout=180_000)
    assert sent[-1]["history"] == [
        {"role": "user", "content": first_question},
        {"role": "assistant", "content": first_answer},
    ]
    assert sent[-1]["collection"] == "ui-uploads"
    assert page.locator("#turns > li").count() == 1
    assert first_question in page.inner_text("#turns")
    assert page.inner_text("#asked") == "Which project has that codename?"
    page.screenshot(path=str(ARTIFACTS / "ui-conversation.png"), full_page=True)
    page.click("#reset")
    assert page.locator("#turns > li").count() == 0 and not page.inner_text("#answer")

"""The browser page, driven in headless Chromium against the real service."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest

from rag.qa.support import check_answer
from rag.records import Citation

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
    # The source opens in its original, at its page, with what supports the answer marked
    # (the spans of the sentences it supports, or the whole passage).
    first.locator(".open-source").click()
    marks = page.locator('#viewer .pdf-page[data-page="3"] .span-highlight')
    marks.first.wait_for(timeout=60_000)
    assert "".join(marks.evaluate_all("els => els.map(e => e.dataset.text)")).strip()
    page.click("#viewer-close")


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
    # The answer as shown, less the buttons that open its citations.
    first_answer = page.eval_on_selector(
        "#answer",
        "el => { const a = el.cloneNode(true); a.querySelectorAll('button.cite').forEach(b => "
        "b.remove()); return a.textContent; }",
    )
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


def _cited(server: str, query: str, source: str) -> Citation:
    """The passage of `source` that the service retrieves for `query`, as a citation."""
    hits = httpx.post(f"{server}/api/search", json={"query": query}, timeout=60).json()["hits"]
    hit = next(h for h in hits if h["source"] == source)
    return Citation(
        1,
        hit["source"],
        hit["page"],
        hit["heading"],
        hit["chunk_id"],
        hit["text"],
        hit["score"],
        cited=True,
        chunk_ids=[hit["chunk_id"]],
        doc_id=hit["doc_id"],
    )


def _show_answer(page, answer: str, citation: Citation) -> dict:
    """Put an answer on the page as the service would send it: its sentences checked
    against the citation by the real support checker. Returns the supported sentence."""
    # The collection the citation is from (an earlier test may have left another one); the
    # field's change event (on blur) starts a new conversation, before the answer is shown.
    page.fill("#collection", "default")
    page.locator("#collection").blur()
    sentences = [asdict(s) for s in check_answer(answer, [citation])]
    supported = [s for s in sentences if s["supported"] and s["span"]]
    assert len(supported) == 1, sentences
    done = {
        "answer": answer,
        "citations": [asdict(citation)],
        "sentences": sentences,
        "usage": {"prompt_tokens": 1, "completion_tokens": 0, "ttft_s": 0, "tokens_per_s": 0},
    }
    page.evaluate("(done) => handle('done', JSON.stringify(done))", done)
    return supported[0]


def _policy_violations(messages: list[str]) -> list[str]:
    return [m for m in messages if "Content Security Policy" in m or "Refused to" in m]


def _watch_console(page) -> list[str]:
    """The page's console messages and uncaught errors from now on."""
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    page.on("pageerror", lambda e: messages.append(f"uncaught: {e}"))
    return messages


def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def test_a_pdf_citation_opens_its_page_with_the_span_highlighted(page, server: str) -> None:
    messages = _watch_console(page)
    citation = _cited(
        server,
        "Which command promotes the standby database during a failover?",
        "samples/incident-runbook.pdf",
    )
    assert citation.page == 3
    answer = "To fail over, promote the standby with the command harbor-db promote [1]."
    sentence = _show_answer(page, answer, citation)
    # The supported sentence carries its citation; opening it shows the PDF's page 3.
    cite = page.locator("#answer button.cite")
    assert cite.inner_text().endswith("incident-runbook.pdf, p. 3")
    cite.click()
    marks = page.locator('#viewer .pdf-page[data-page="3"] .span-highlight')
    marks.first.wait_for(timeout=60_000)
    assert page.inner_text("#viewer-where") == "page 3 of 3"
    # What is highlighted is the span, as pdf.js reads the page (spaced its own way).
    marked = "".join(marks.evaluate_all("els => els.map(e => e.dataset.text)"))
    assert _letters(marked) == _letters(sentence["span"]["text"])
    assert "harbor-db promote" in marked
    # On the drawn page: every box inside the page, on the page's canvas.
    sheet = page.locator('#viewer .pdf-page[data-page="3"]').bounding_box()
    for box in marks.evaluate_all("els => els.map(e => e.getBoundingClientRect().toJSON())"):
        assert box["width"] > 50 and box["height"] > 5
        assert sheet["x"] <= box["x"] and box["x"] + box["width"] <= sheet["x"] + sheet["width"]
        assert sheet["y"] <= box["y"] and box["y"] + box["height"] <= sheet["y"] + sheet["height"]
    assert page.locator("#viewer .pdf-page canvas").count() == 1
    page.locator("#viewer").screenshot(path=str(ARTIFACTS / "ui-viewer-pdf.png"))
    page.click("#viewer-close")
    assert _policy_violations(messages) == [] and not any("uncaught" in m for m in messages)


def test_a_markdown_citation_opens_the_file_with_the_span_marked(page, server: str) -> None:
    messages = _watch_console(page)
    citation = _cited(server, "How many vacation days do employees get?", "samples/handbook.md")
    answer = "Every full-time employee receives 27 days of paid vacation per year [1]."
    sentence = _show_answer(page, answer, citation)
    # From the sources list: the source opens at the sentence it supports.
    page.locator("#sources .open-source").click()
    mark = page.locator("#viewer-text mark.span-highlight")
    mark.wait_for(timeout=30_000)
    assert mark.inner_text() == sentence["span"]["text"]
    # The whole original file, as written (Markdown markup and all), not the passage alone.
    shown = page.inner_text("#viewer-text")
    handbook = (ROOT / "samples" / "handbook.md").read_text()
    assert shown.strip() == handbook.strip()
    page.locator("#viewer").screenshot(path=str(ARTIFACTS / "ui-viewer-markdown.png"))
    page.click("#viewer-close")
    assert _policy_violations(messages) == [] and not any("uncaught" in m for m in messages)


def test_an_html_original_is_shown_as_its_text_and_nothing_of_it_runs(page) -> None:
    messages = _watch_console(page)
    html = (
        "<!doctype html><html><head><title>T</title><style>p{color:red}</style>"
        f"<script>document.title='owned'</script></head><body><nav>Home | About</nav>"
        f"<main><h1>Harbor ferry</h1><p>The ferry leaves at <b>nine</b>&nbsp;&amp; {HOSTILE}"
        "</p><!-- <img src=y onerror=alert(1)> --><p>Tickets cost three euros.</p></main>"
    )
    text = page.evaluate("(html) => htmlText(html)", html)
    assert text == "Harbor ferry\n\nThe ferry leaves at nine &\n\nTickets cost three euros."
    page.wait_for_timeout(300)  # an image's error event, had one been made, fires by now
    assert page.title() != "owned" and _policy_violations(messages) == []

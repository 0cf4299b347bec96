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

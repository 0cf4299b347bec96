"""Scanned PDFs: pages of a real manual rendered to images (pdftoppm) and wrapped into an
image-only PDF (img2pdf) are OCR'd by Tesseract inside the parse worker, indexed and cited
by page; what cannot be read is reported page by page, never a crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from bench.ocr import char_ratio, make_scan, text_layer
from ingest.ocr import OcrOptions
from ingest.parsers import parse_file
from ingest.report import Progress
from ingest.run import run_ingest
from ingest.worker import Limits, parse_isolated
from rag.config import IngestSettings, Settings, load_settings
from rag.embed.embedder import Embedder
from rag.errors import ConfigError
from rag.index.store import Store, open_store
from rag.ops.machinechecks import check_ocr
from rag.qa.retrieval import Retriever
from rag.records import Passage
from tests.pdfwrite import write_pdf

from .conftest import RAG, ROOT, rag_env
from .corpus import debian_document

FAQ = "usr/share/doc/debian/FAQ/debian-faq.en.pdf.gz"
# Four pages of the Debian FAQ (A4, 10 pt text) and a question each page answers.
PAGES = [10, 20, 30, 40]
QUESTIONS = [
    ("Who created the Debian Project, and in which year?", 1),
    ("Can I use apt package tools on Knoppix installed on the hard disk?", 2),
    ("Which Toy Story character gave bookworm its name?", 3),
    ("How do I put a package on hold with dpkg?", 4),
]
LIMITS = Limits(timeout_s=60, memory_bytes=2 * 2**30, max_file_bytes=2**28)


@dataclass(frozen=True)
class Scan:
    pdf: Path
    truth: list[str]  # each page's text layer in the original PDF


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    missing = [t for t in ("pdftoppm", "img2pdf", "tesseract") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: make test-tools (poppler-utils, img2pdf, "
                    "tesseract-ocr)")  # fmt: skip
    faq = debian_document("debian-faq", FAQ)
    out = tmp_path_factory.mktemp("scan") / "faq-scan.pdf"
    return Scan(make_scan(faq, PAGES, out), text_layer(faq, PAGES))


def _page_text(chunks: list[Passage], page: int) -> str:
    """A page's text put back together from its chunks, overlaps dropped."""
    text, end = "", -1
    for chunk in sorted((c for c in chunks if c.page == page), key=lambda c: c.char_start):
        if chunk.char_end <= end:
            continue
        skip = max(0, end - chunk.char_start)
        text += (" " if chunk.char_start > end else "") + chunk.text[skip:]
        end = chunk.char_end
    return text


def test_a_scanned_manual_is_read_and_its_pages_cited(
    scan: Scan, settings: Settings, embedder: Embedder, store: Store
) -> None:
    assert all(not (p.extract_text() or "").strip() for p in PdfReader(scan.pdf).pages)
    seen: list[Progress] = []
    started = time.perf_counter()
    report = run_ingest(
        [scan.pdf],
        collection="default",
        chunking=settings.chunking,
        embedder=embedder,
        store=store,
        on_progress=seen.append,
    )
    seconds = time.perf_counter() - started
    assert (report.added, report.failed, report.ocr_failed) == (1, [], [])
    assert (report.pages, report.ocr_pages, report.empty_pages) == (4, 4, [])
    # Progress counts the OCR'd pages as they are read, not only at the end.
    assert any(p.stage == "ocr" for p in seen) and seen[-1].ocr_pages == 4
    (document,) = store.documents("default").values()
    chunks = store.source_chunks("default", document.source)
    ratios = [char_ratio(truth, _page_text(chunks, n)) for n, truth in enumerate(scan.truth, 1)]
    pages_per_s = len(PAGES) / seconds
    print(f"\nOCR: characters right {[round(r, 4) for r in ratios]}, {pages_per_s:.2f} pages/s")
    assert min(ratios) >= 0.95
    retriever = Retriever(store, embedder)
    for question, page in QUESTIONS:
        best = retriever.search(question, "default", 3)[0]
        assert best.page == page, (question, best.page, best.text[:200])


def test_pages_out_of_time_are_reported_and_the_file_still_comes_back(scan: Scan) -> None:
    # 2 s for the file, of which OCR keeps 2 s back for sending the result: no page starts.
    options = OcrOptions(seconds_per_page=0.01)
    limits = Limits(2.01, LIMITS.memory_bytes, LIMITS.max_file_bytes, ocr=options)
    started = time.perf_counter()
    parsed = parse_isolated(scan.pdf, limits)
    assert time.perf_counter() - started < 2.01 + 4 * 0.01
    assert parsed.ocr_pages == [] and parsed.empty_pages == [1, 2, 3, 4]
    assert [page for page, _ in parsed.ocr_failed] == [1, 2, 3, 4]
    assert all("time ran out" in why for _, why in parsed.ocr_failed)


def test_a_few_characters_over_a_page_image_are_a_stamp_and_the_page_is_ocr_read(
    scan: Scan, tmp_path: Path
) -> None:
    stamp_pdf, text_pdf = tmp_path / "stamp.pdf", tmp_path / "text.pdf"
    write_pdf(stamp_pdf, ["Scanned 2024-05-02"])
    body = "Harbor cranes unload the reefer containers at berth four every morning."
    write_pdf(text_pdf, [body])
    writer = PdfWriter()
    scanned = writer.add_page(PdfReader(scan.pdf).pages[0])
    scanned.merge_page(PdfReader(stamp_pdf).pages[0])
    writer.add_page(PdfReader(text_pdf).pages[0])
    mixed = tmp_path / "mixed.pdf"
    with mixed.open("wb") as f:
        writer.write(f)
    parsed = parse_file(mixed, 2**28)
    assert parsed.ocr_pages == [1] and parsed.ocr_failed == []
    first, second = (s for s in parsed.sections if s.page in (1, 2))
    assert "created by Ian Murdock in 1993" in " ".join(first.text.split())
    assert second.text.strip() == body  # a real text layer is kept, not OCR'd
    forced = parse_file(text_pdf, 2**28, ocr=OcrOptions(mode="force"))
    assert forced.ocr_pages == [1]
    assert "reefer containers at berth four" in " ".join(forced.sections[0].text.split())
    assert parse_file(mixed, 2**28, ocr=OcrOptions(mode="off")).empty_pages == []


def test_without_tesseract_scans_are_reported_per_file_and_page_not_crashed(
    scan: Scan, tmp_path: Path, embedder: Embedder
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(scan.pdf, docs / "scan.pdf")
    writer = PdfWriter()
    writer.add_page(PdfReader(scan.pdf).pages[1])
    text_pdf = tmp_path / "text.pdf"
    write_pdf(text_pdf, ["The quay schedule lists every vessel due this week."])
    writer.add_page(PdfReader(text_pdf).pages[0])
    with (docs / "mixed.pdf").open("wb") as f:
        writer.write(f)
    # Only the virtual environment's programs: no tesseract on PATH.
    env = rag_env(tmp_path / "data", PATH=str(Path(sys.executable).parent))
    done = subprocess.run(
        [str(RAG), "ingest", str(docs), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 1 and report["ocr_pages"] == 0
    (failed,) = report["failed"]
    assert Path(failed["path"]).name == "scan.pdf" and failed["reason"] == "ocr"
    assert "tesseract is not installed" in failed["error"]
    unread = {Path(e["path"]).name: e for e in report["ocr_failed"]}
    assert unread["mixed.pdf"]["pages"] == [1] and unread["scan.pdf"]["pages"] == [1, 2, 3, 4]
    assert "apt-get install tesseract-ocr" in unread["mixed.pdf"]["error"]
    # With Tesseract back, the next ingest reads the page it missed, though the bytes are
    # the same; after that the file is unchanged.
    store = open_store(tmp_path / "data", embedder.name, embedder.dim)
    chunking = load_settings(ROOT / "config.toml", env={}).chunking
    again = [run_ingest([docs / "mixed.pdf"], collection="default", chunking=chunking,
                        embedder=embedder, store=store) for _ in range(2)]  # fmt: skip
    assert (again[0].updated, again[0].ocr_pages, again[0].ocr_failed) == (1, 1, [])
    assert again[1].unchanged == 1


def test_the_doctor_warns_when_tesseract_or_a_language_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if shutil.which("tesseract"):
        assert check_ocr(IngestSettings()).status == "ok"
        missing = check_ocr(IngestSettings(ocr_languages="eng+qqq"))
        assert missing.status == "warn" and "no data for qqq" in missing.evidence
    assert check_ocr(IngestSettings(ocr="off")).status == "ok"
    monkeypatch.setenv("PATH", os.devnull)
    absent = check_ocr(IngestSettings())
    assert absent.status == "warn" and "tesseract is not installed" in absent.evidence
    assert "tesseract" in absent.fix


@pytest.mark.parametrize(
    ("key", "value"),
    [("OCR", "sometimes"), ("OCR_LANGUAGES", "eng+"), ("OCR_SECONDS_PER_PAGE", "0")],
)
def test_ocr_settings_are_checked(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=r"ingest\.ocr"):
        load_settings(ROOT / "config.toml", env={f"RAG_INGEST_{key}": value})
    settings = load_settings(ROOT / "config.toml", env={"RAG_INGEST_OCR_LANGUAGES": "eng+deu"})
    assert settings.ingest.ocr_languages == "eng+deu"

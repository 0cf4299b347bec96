"""What an ingest run tells its caller: live Progress while it runs, an IngestReport at the end.

Rates and the ETA are computed here, once, so the CLI's bar, the web UI and any other caller
of the progress callback show the same numbers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# How the human report names each skip reason (ingest/discovery.py decides them).
SKIP_WORDS = {
    "hidden": "hidden",
    "unsupported": "unsupported",
    "link_outside": "links outside the folder",
    "duplicate": "second names of a file",
}


@dataclass
class IngestReport:
    """The `rag ingest --json` object (DESIGN.md); keys after `seconds` are extensions."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    # {"path", "error", "reason"}; reason is one of ParseError's reasons, or "store".
    failed: list[dict[str, str]] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0
    # Paths not read, by rule: of a kind no parser reads, hidden (a dot name), links leaving
    # the folder, second names of a file read once. Why: in `skipped_reasons`.
    skipped: list[str] = field(default_factory=list)
    # PDF pages read (other formats count one page per file) in files that were parsed.
    pages: int = 0
    # {"path", "pages": [n, ...]}: PDF pages with no extractable text, likely scans.
    empty_pages: list[dict[str, Any]] = field(default_factory=list)
    # {"path", "reason"} for each of `skipped`: unsupported, hidden, link_outside, duplicate.
    skipped_reasons: list[dict[str, str]] = field(default_factory=list)
    # PDF pages whose text was read by OCR (ingest.ocr), in files that were parsed.
    ocr_pages: int = 0
    # {"path", "pages": [n, ...], "error"}: scanned pages OCR could not read, and why
    # (Tesseract missing, a language without data, out of time); the rest of the file stands.
    ocr_failed: list[dict[str, Any]] = field(default_factory=list)
    # PDF tables found; each is a Markdown section of its own (one chunk where it fits).
    tables: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def fail(self, path: str, message: str, reason: str) -> None:
        self.failed.append({"path": path, "error": message, "reason": reason})

    def skipped_summary(self) -> str:
        """One line for people: how many paths were skipped, and why."""
        counts = Counter(s["reason"] for s in self.skipped_reasons)
        kinds = ", ".join(f"{n} {SKIP_WORDS.get(r, r)}" for r, n in counts.most_common())
        return f"skipped {len(self.skipped)}: {kinds} (--json lists them)"

    def unread(self, path: str, failed: list[tuple[int, str]]) -> None:
        """Note a file's scanned pages that OCR could not read: one entry per reason."""
        for error, pages in group_pages(failed).items():
            self.ocr_failed.append({"path": path, "pages": pages, "error": error})

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append(path)
        self.skipped_reasons.append({"path": path, "reason": reason})


def group_pages(failed: list[tuple[int, str]]) -> dict[str, list[int]]:
    """Pages that failed OCR, by reason: one report line per reason, not per page."""
    grouped: dict[str, list[int]] = {}
    for page, why in failed:
        grouped.setdefault(why, []).append(page)
    return grouped


def no_text_message(
    empty_pages: list[int], ocr_pages: list[int], ocr_failed: list[tuple[int, str]]
) -> str:
    """Why a file gave no text: with scanned pages, why OCR did not read them."""
    if not empty_pages:
        return "no extractable text"
    reasons = sorted(group_pages(ocr_failed))
    if reasons:
        return f"no extractable text; its scanned pages could not be OCR'd: {reasons[0]}"
    if ocr_pages:
        return "no extractable text: OCR found no text on its scanned pages"
    return 'no extractable text (scanned pages? set ingest.ocr = "auto" to OCR them)'


@dataclass(frozen=True, slots=True)
class Progress:
    files_done: int
    files_total: int
    chunks: int
    current: str
    pages: int = 0
    # "scanning", "parsing", "ocr", "embedding", "writing", "optimizing", "reembedding"
    # or "done".
    stage: str = ""
    elapsed_s: float = 0.0
    chunks_per_s: float = 0.0
    eta_s: float | None = None  # None until there is enough to estimate from
    ocr_pages: int = 0  # PDF pages read by OCR so far


class ProgressMeter:
    """Turns counts into Progress events: chunks/s since the first embedding, ETA by bytes.

    Bytes of files still to parse and embed predict remaining time better than file counts,
    since one manual can outweigh a hundred notes.
    """

    def __init__(self, on_progress: Callable[[Progress], None] | None, files_total: int) -> None:
        self.on_progress = on_progress
        self.files_total = files_total
        self.files_done = 0
        self.chunks = 0
        self.pages = 0
        self.ocr_pages = 0
        # Work to do, in bytes of files to parse and embed (rows to re-embed for a rebuild):
        # all files' bytes at the start; unchanged files are taken off as they are found.
        self.work_total = 0
        self.work_done = 0.0
        self.started = time.perf_counter()
        self._work_started: float | None = None

    def start_work(self) -> None:
        """Mark the first file that has to be parsed and embedded: rates count from here."""
        if self._work_started is None:
            self._work_started = time.perf_counter()

    def emit(self, stage: str, current: str = "") -> None:
        if self.on_progress is None:
            return
        now = time.perf_counter()
        elapsed = now - self.started
        working = now - self._work_started if self._work_started is not None else 0.0
        eta = None
        if stage == "done" or self.work_done >= self.work_total:
            eta = 0.0
        elif self.work_done > 0 and working > 0:
            eta = working / self.work_done * (self.work_total - self.work_done)
        self.on_progress(
            Progress(
                files_done=self.files_done,
                files_total=self.files_total,
                chunks=self.chunks,
                current=current,
                pages=self.pages,
                stage=stage,
                elapsed_s=round(elapsed, 3),
                chunks_per_s=round(self.chunks / working, 2) if working > 0 else 0.0,
                eta_s=None if eta is None else round(eta, 1),
                ocr_pages=self.ocr_pages,
            )
        )

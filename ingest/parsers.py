"""Which files we read, and how: a file's bytes in, its sections and a parse report out.

`parse_file` runs inside the parse worker (ingest/worker.py); everything it calls must be
safe to kill at any moment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.budget import TextBudget
from ingest.discovery import kind_of, read_regular
from ingest.markup import parse_markdown, parse_rst
from ingest.ocr import OcrOptions
from ingest.pdf import parse_pdf_bytes
from ingest.text import declared_charset, decode_text
from ingest.webpage import parse_html
from rag.errors import ParseError
from rag.records import Section


@dataclass
class ParsedDocument:
    sections: list[Section]
    doc_hash: str  # sha256 of the bytes that were parsed
    pages: int = 1  # PDF pages; other formats count as one page
    empty_pages: list[int] = field(default_factory=list)  # PDF pages with no extractable text
    ocr_pages: list[int] = field(default_factory=list)  # PDF pages whose text came from OCR
    ocr_failed: list[tuple[int, str]] = field(default_factory=list)  # (page, why not OCR'd)
    tables: int = 0  # PDF tables found, each a section of its own


def parse_file(
    path: Path,
    max_file_bytes: int,
    budget: TextBudget | None = None,
    name: Path | None = None,
    ocr: OcrOptions | None = None,
) -> ParsedDocument:
    """Read and parse one file; raise ParseError (with a reason) when it cannot be used.

    `path` is the regular file to read; `name` (default: `path`) names it in messages and
    decides its format, as for a link read under its own name.
    """
    name = name or path
    if kind_of(name) is None:
        raise ParseError(f"{name}: unsupported file type", "unsupported")
    try:
        data = read_regular(path, max_file_bytes)
    except ParseError as e:
        raise ParseError(e.message.replace(str(path), str(name)), e.reason) from e
    return parse_bytes(name, data, budget, ocr)


def parse_bytes(
    path: Path, data: bytes, budget: TextBudget | None = None, ocr: OcrOptions | None = None
) -> ParsedDocument:
    """Parse a file's bytes read elsewhere (a Ray worker gets them from the driver).

    `path` only names the file and decides its format; it need not exist here. Text past
    the `budget` fails the file with reason `limit`; `ocr` says which PDF pages to OCR.
    """
    budget = budget or TextBudget()
    kind = kind_of(path)
    if kind is None:
        raise ParseError(f"{path}: unsupported file type", "unsupported")
    doc_hash = hashlib.sha256(data).hexdigest()
    if kind == "pdf":
        pdf = parse_pdf_bytes(data, str(path), budget, ocr)
        return ParsedDocument(
            pdf.sections,
            doc_hash,
            pdf.pages,
            pdf.empty_pages,
            pdf.ocr_pages,
            pdf.ocr_failed,
            pdf.tables,
        )
    declared = declared_charset(data) if kind == "html" else None
    text = decode_text(data, str(path), declared)
    budget.check_text(str(path), len(text), len(data))
    return ParsedDocument(_TEXT_PARSERS[kind](text), doc_hash)


def _parse_plain(text: str) -> list[Section]:
    return [Section(text=text)] if text.strip() else []


_TEXT_PARSERS: dict[str, Callable[[str], list[Section]]] = {
    "markdown": parse_markdown,
    "text": _parse_plain,
    "rst": parse_rst,
    "html": parse_html,
}

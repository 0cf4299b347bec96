"""Which files we read, and how: a file's bytes in, its sections and a parse report out.

`parse_file` runs inside the parse worker (ingest/worker.py); everything it calls must be
safe to kill at any moment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.markup import parse_markdown, parse_rst
from ingest.text import declared_charset, decode_text
from rag.errors import ParseError
from rag.records import Section

SUFFIXES: dict[str, str] = {
    ".pdf": "pdf",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".mkd": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".rst": "rst",
    ".rest": "rst",
}


@dataclass
class ParsedDocument:
    sections: list[Section]
    doc_hash: str  # sha256 of the bytes that were parsed
    pages: int = 1  # PDF pages; other formats count as one page
    empty_pages: list[int] = field(default_factory=list)  # PDF pages with no extractable text


def kind_of(path: Path) -> str | None:
    """The format we read `path` as, or None when it is of a kind we skip."""
    return SUFFIXES.get(path.suffix.lower())


def parse_file(path: Path, max_file_bytes: int) -> ParsedDocument:
    """Read and parse one file; raise ParseError (with a reason) when it cannot be used."""
    kind = kind_of(path)
    if kind is None:
        raise ParseError(f"{path}: unsupported file type", "unsupported")
    try:
        size = path.stat().st_size
        if size > max_file_bytes:
            raise ParseError(
                f"{path}: {size / 2**20:.0f} MiB is over ingest.max_file_mb "
                f"({max_file_bytes / 2**20:.0f} MiB)",
                "too_large",
            )
        data = path.read_bytes()
    except OSError as e:
        raise ParseError(f"cannot read {path}: {e.strerror}", "unreadable") from e
    return parse_bytes(path, data)


def parse_bytes(path: Path, data: bytes) -> ParsedDocument:
    """Parse a file's bytes read elsewhere (a Ray worker gets them from the driver).

    `path` only names the file and decides its format; it need not exist here.
    """
    kind = kind_of(path)
    if kind is None:
        raise ParseError(f"{path}: unsupported file type", "unsupported")
    doc_hash = hashlib.sha256(data).hexdigest()
    if kind == "pdf":
        from ingest.pdf import parse_pdf_bytes

        pdf = parse_pdf_bytes(data, str(path))
        return ParsedDocument(pdf.sections, doc_hash, pdf.pages, pdf.empty_pages)
    declared = declared_charset(data) if kind == "html" else None
    text = decode_text(data, str(path), declared)
    return ParsedDocument(_TEXT_PARSERS[kind](text), doc_hash)


def _parse_plain(text: str) -> list[Section]:
    return [Section(text=text)] if text.strip() else []


def _parse_html(text: str) -> list[Section]:
    from ingest.webpage import parse_html

    return parse_html(text)


_TEXT_PARSERS: dict[str, Callable[[str], list[Section]]] = {
    "markdown": parse_markdown,
    "text": _parse_plain,
    "rst": parse_rst,
    "html": _parse_html,
}

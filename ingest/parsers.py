"""Read a file into Sections: PDF page by page, Markdown by heading, plain text whole."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from rag.errors import ParseError
from rag.records import Section

MARKDOWN_SUFFIXES = (".md", ".markdown")
TEXT_SUFFIXES = (".txt", ".text")
PDF_SUFFIXES = (".pdf",)

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def parse_markdown(text: str) -> list[Section]:
    """Split at headings outside code fences; each section keeps its heading path."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    start = 0
    in_fence = False
    offset = 0
    heading = ""

    def close(end: int) -> None:
        body = text[start:end]
        if body.strip():
            sections.append(Section(text=body, heading=heading, char_start=start))

    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\r\n"))
        if match:
            close(offset)
            level = len(match.group(1))
            path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match.group(2))]
            heading = " > ".join(title for _, title in path)
            start = offset
        offset += len(line)
    close(len(text))
    return sections


def decode_text(data: bytes, name: str) -> str:
    """Decode UTF-8 (with or without BOM), UTF-16 with BOM, else Windows-1252."""
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ParseError(f"{name}: looks binary (NUL bytes), not text; skip or convert it")
    for encoding in ("utf-8-sig", "utf-16"):
        try:
            if encoding == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
                continue
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    # cp1252 decodes almost every byte; the few it cannot become U+FFFD rather than a failure.
    return data.decode("cp1252", errors="replace")


def parse_pdf(path: Path) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and reader.decrypt("") == 0:
            raise ParseError(f"{path}: the PDF is password-protected; decrypt it first")
        pages = list(reader.pages)
    except ParseError:
        raise
    except FileNotDecryptedError as e:
        raise ParseError(f"{path}: the PDF is password-protected; decrypt it first") from e
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise ParseError(f"{path}: not a readable PDF ({type(e).__name__}: {e})") from e
    sections: list[Section] = []
    offset = 0
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception:
            text = ""
        if text.strip():
            sections.append(Section(text=text, page=number, char_start=offset))
        offset += len(text) + 1
    return sections


def parser_for(path: Path) -> Callable[[Path], list[Section]] | None:
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return parse_pdf
    if suffix in MARKDOWN_SUFFIXES:
        return lambda p: parse_markdown(decode_text(p.read_bytes(), str(p)))
    if suffix in TEXT_SUFFIXES:
        return lambda p: [Section(text=decode_text(p.read_bytes(), str(p)))]
    return None

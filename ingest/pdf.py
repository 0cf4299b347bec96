"""PDF to sections: one per page, and one per table; scanned pages OCR'd, empty ones listed.

pypdf reads each page's text layer. Then pypdfium2 looks at the pages: those without a text
layer (scans) are OCR'd (ingest/ocr.py) and those that draw rules are searched for tables
(ingest/pdftables.py), which become Markdown sections of their own so that a table is one
chunk. Runs inside the parse worker (ingest/worker.py), which bounds its time and memory;
pypdf's own limits stop decompression bombs early with LimitReachedError.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

from ingest.budget import TextBudget
from ingest.ocr import OcrOptions, ocr_pages, scan_pages
from ingest.pdftables import find_tables, has_rules, text_around
from rag.errors import ParseError
from rag.records import Section

# Pages whose extracted text has fewer visible characters than this count as empty.
MIN_PAGE_CHARS = 1

_LOCKED = "{}: the PDF is password-protected; decrypt it first"


@dataclass
class PdfText:
    sections: list[Section]
    pages: int
    empty_pages: list[int] = field(default_factory=list)  # 1-based
    ocr_pages: list[int] = field(default_factory=list)  # pages whose text came from OCR
    ocr_failed: list[tuple[int, str]] = field(default_factory=list)  # (page, why)
    tables: int = 0


class _PageFull(Exception):
    """Raised from inside pypdf's extraction: the page already holds more than its budget."""


def parse_pdf_bytes(
    data: bytes, name: str, budget: TextBudget | None = None, ocr: OcrOptions | None = None
) -> PdfText:
    budget = budget or TextBudget()
    texts = _text_layer(data, name, budget)
    result = PdfText([], len(texts))
    pieces: list[list[tuple[str, str]]] = [[(text, "")] for text in texts]  # (text, heading)
    options = ocr or OcrOptions()
    document = _open_pdfium(data)
    scans: list[int] = []
    if document is not None:
        scans = scan_pages(document, texts, options)
    elif options.mode != "off":
        why = "pypdfium2 could not open the PDF to render its pages"
        result.ocr_failed = [(n, why) for n, t in enumerate(texts, start=1) if not t.strip()]
    if scans:
        read = ocr_pages(document, scans, options, name)
        for number, text in read.texts.items():
            budget.check_page(name, number, len(text))
            pieces[number - 1] = [(text, "")]
        result.ocr_pages = sorted(read.texts)
        result.ocr_failed = read.failed
    if document is not None:
        result.tables = _tables(data, document, pieces, set(scans))
    offset = 0
    for number, page_pieces in enumerate(pieces, start=1):
        if not any(len(text.strip()) >= MIN_PAGE_CHARS for text, _ in page_pieces):
            result.empty_pages.append(number)
        for text, heading in page_pieces:
            if text.strip():
                result.sections.append(Section(text, number, heading, offset))
            offset += len(text) + 1  # pieces and pages are joined by a newline
        budget.check_text(name, offset, len(data))
    return result


def _text_layer(data: bytes, name: str, budget: TextBudget) -> list[str]:
    """Each page's text as pypdf extracts it ("" for a page it cannot read)."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PyPdfError

    # Malformed files make pypdf log a warning per object; the failure reason says enough.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        # PdfReader already tried the empty user password; a permissions-only PDF is open now.
        if reader.is_encrypted and reader.decrypt("") == 0:
            raise ParseError(_LOCKED.format(name), reason="encrypted")
        pages = list(reader.pages)
    except ParseError:
        raise
    except FileNotDecryptedError as e:
        raise ParseError(_LOCKED.format(name), reason="encrypted") from e
    except LimitReachedError as e:
        raise ParseError(f"{name}: the PDF exceeds a safety limit ({e})", "limit") from e
    except DependencyError as e:
        raise ParseError(f"{name}: {e} (pip install 'pypdf[crypto]')") from e
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ParseError(f"{name}: not a readable PDF ({type(e).__name__}: {e})") from e
    texts: list[str] = []
    chars = 0
    for number, page in enumerate(pages, start=1):
        try:
            text = _page_text(page, budget.max_text_chars_per_page)
        except _PageFull:
            budget.check_page(name, number, budget.max_text_chars_per_page + 1)
            raise
        except LimitReachedError as e:
            raise ParseError(f"{name}: page {number} exceeds a safety limit ({e})", "limit") from e
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
            # One broken page must not lose the document; it is reported as empty.
            text = ""
        texts.append(text)
        chars += len(text) + 1
        budget.check_text(name, chars, len(data))
    return texts


def _page_text(page: Any, max_chars: int) -> str:
    """The page's text; stops extracting (raises _PageFull) once it passes `max_chars`.

    A form drawn many times is extracted each time it is drawn: counting as pypdf goes
    bounds the work by the budget, not by what the page claims to hold.
    """
    seen = 0

    def count(text: str, *_: Any) -> None:
        nonlocal seen
        seen += len(text)
        if seen > max_chars:
            raise _PageFull

    return page.extract_text(visitor_text=count) or ""


def _open_pdfium(data: bytes) -> Any:
    """The PDF opened by pypdfium2 (to render pages and count their drawings), or None."""
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data, password="")
    except pdfium.PdfiumError:
        return None


def _tables(data: bytes, document: Any, pieces: list[list[tuple[str, str]]], skip: set[int]) -> int:
    """Put each ruled page's tables in `pieces` as Markdown sections; the tables found."""
    ruled = [
        n
        for n in range(1, len(pieces) + 1)
        if n not in skip and pieces[n - 1][0][0].strip() and has_rules(document[n - 1])
    ]
    if not ruled:
        return 0
    import pdfplumber

    found = 0
    try:
        plumber = pdfplumber.open(io.BytesIO(data))
    except Exception:  # pdfminer's errors have no common base; the text layer stands
        return 0
    with plumber:
        for number in ruled:
            try:
                page = plumber.pages[number - 1]
                tables = find_tables(page)
                if not tables:
                    continue
                split = [(text, t.caption if t else "") for text, t in text_around(page, tables)]
            except Exception:  # one page pdfminer cannot lay out keeps its text layer
                continue
            finally:
                plumber.flush_cache()
            pieces[number - 1] = split
            found += len(tables)
    return found

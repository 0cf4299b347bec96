"""PDF to one section per page, with the pages that yielded no text (scans) listed.

Runs inside the parse worker (ingest/worker.py), which bounds its time and memory; pypdf's own
limits stop decompression bombs early with LimitReachedError.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

from ingest.budget import TextBudget
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


class _PageFull(Exception):
    """Raised from inside pypdf's extraction: the page already holds more than its budget."""


def parse_pdf_bytes(data: bytes, name: str, budget: TextBudget | None = None) -> PdfText:
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
    budget = budget or TextBudget()
    sections: list[Section] = []
    empty: list[int] = []
    offset = 0
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
        if len(text.strip()) < MIN_PAGE_CHARS:
            empty.append(number)
        else:
            sections.append(Section(text=text, page=number, char_start=offset))
        offset += len(text) + 1  # pages are joined by a newline in the document's text
        budget.check_text(name, offset, len(data))
    return PdfText(sections, len(pages), empty)


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

"""PDF to one section per page, with the pages that yielded no text (scans) listed.

Runs inside the parse worker (ingest/worker.py), which bounds its time and memory; pypdf's own
limits stop decompression bombs early with LimitReachedError.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

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


def parse_pdf_bytes(data: bytes, name: str) -> PdfText:
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
    sections: list[Section] = []
    empty: list[int] = []
    offset = 0
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
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
    return PdfText(sections, len(pages), empty)

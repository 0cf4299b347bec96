"""OCR of PDF pages that have no text layer: render each page (pypdfium2), read it (Tesseract).

Runs inside the parse worker, so its memory limit bounds the rendering and its deadline
(moved on by `ingest.ocr_seconds_per_page` for each page, ingest/deadline.py) bounds the
reading. A page that fails is reported with its reason and the file goes on; when Tesseract
is missing the scanned pages are reported as such and the rest of the file is indexed.

Which pages: with `ingest.ocr = "auto"` those whose text layer is empty, or only a few
characters over an image that covers most of the page (a scanner's stamp, a page number);
"force" reads every page (a text layer that is garbage), "off" none.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ingest import deadline
from ingest.tesseract import find_tesseract, read_image, unavailable_reason
from rag.errors import ParseError

MODES = ("auto", "off", "force")
# Tesseract's best resolution for body text; 200 loses small print, 400 only costs time.
OCR_DPI = 300
# Pixels one rendered page may have (A4 at 300 dpi is 8.7 M): a page that declares itself
# metres wide is rendered smaller rather than allocating gigabytes.
MAX_PAGE_PIXELS = 40_000_000
# "auto": a text layer this short over a page-sized image is a stamp, not the page's text.
SCAN_MAX_CHARS = 40
# An image covering this share of the page makes it a scan.
SCAN_MIN_IMAGE_SHARE = 0.6
# Seconds kept back from a page's OCR so the file's result still reaches the parent in time.
RESULT_MARGIN_S = 2.0
# A page left less time than this is not started: no page of text is read that fast.
MIN_PAGE_S = 0.5


@dataclass(frozen=True, slots=True)
class OcrOptions:
    """The ingest.ocr* settings, as the parse worker needs them."""

    mode: str = "auto"
    languages: str = "eng"
    seconds_per_page: float = 30.0
    max_pages: int = 1000


@dataclass
class OcrResult:
    texts: dict[int, str] = field(default_factory=dict)  # page (1-based) -> text read
    failed: list[tuple[int, str]] = field(default_factory=list)  # (page, why)


def scan_pages(document: Any, texts: list[str], options: OcrOptions) -> list[int]:
    """The 1-based pages of the pypdfium2 `document` to OCR, given their text layers."""
    if options.mode == "off":
        return []
    if options.mode == "force":
        return list(range(1, len(texts) + 1))
    pages = []
    for number, text in enumerate(texts, start=1):
        chars = len("".join(text.split()))
        if chars == 0 or (chars <= SCAN_MAX_CHARS and _mostly_image(document[number - 1])):
            pages.append(number)
    return pages


def ocr_pages(document: Any, pages: list[int], options: OcrOptions, name: str) -> OcrResult:
    """Read `pages` of the pypdfium2 `document`; never raises for one page's failure."""
    result = OcrResult()
    if not pages:
        return result
    engine = find_tesseract()
    why = unavailable_reason(engine, options.languages)
    if engine is None or why:
        result.failed = [(page, why) for page in pages]
        return result
    for n, page in enumerate(pages):
        if n >= options.max_pages:
            limit = f"past ingest.ocr_max_pages ({options.max_pages}) of this file"
            result.failed += [(p, limit) for p in pages[n:]]
            break
        deadline.extend(options.seconds_per_page, len(result.texts))
        budget_s = deadline.left_s() - RESULT_MARGIN_S
        if math.isinf(budget_s):  # not in a parse process: each page gets its own share
            budget_s = options.seconds_per_page
        if budget_s < MIN_PAGE_S:
            out = "the file's time ran out (ingest.parse_timeout_s, ingest.ocr_seconds_per_page)"
            result.failed.append((page, out))
            continue
        label = f"{name}: page {page}"
        try:
            image = render_page(document[page - 1])
            result.texts[page] = read_image(
                engine.path, image, options.languages, OCR_DPI, budget_s, label
            )
        except ParseError as e:
            result.failed.append((page, e.message.removeprefix(f"{label}: ")))
        except MemoryError:
            result.failed.append((page, "rendering needed more memory than ingest.parse_memory_mb"))
    return result


def render_page(page: Any) -> bytes:
    """The pypdfium2 `page` as an 8-bit grayscale PGM at OCR_DPI (fewer pixels if huge)."""
    import pypdfium2 as pdfium

    width_pt, height_pt = page.get_size()
    scale = OCR_DPI / 72
    pixels = width_pt * height_pt * scale * scale
    if pixels > MAX_PAGE_PIXELS:
        scale *= math.sqrt(MAX_PAGE_PIXELS / pixels)
    try:
        bitmap = page.render(scale=scale, grayscale=True, may_draw_forms=False)
    except pdfium.PdfiumError as e:
        raise ParseError(f"page could not be rendered ({e})", "ocr") from e
    gray = bitmap.to_numpy()
    if gray.ndim == 3:  # pdfium may hand back BGR(A) despite the grayscale request
        gray = gray[..., :3].mean(axis=2).astype("uint8")
    return b"P5 %d %d 255\n" % (gray.shape[1], gray.shape[0]) + gray.tobytes()


def _mostly_image(page: Any) -> bool:
    import pypdfium2.raw as pdfium_c

    width, height = page.get_size()
    area = max(width * height, 1.0)
    for image in _objects(page, pdfium_c.FPDF_PAGEOBJ_IMAGE):
        left, bottom, right, top = image.get_bounds()
        if (right - left) * (top - bottom) >= SCAN_MIN_IMAGE_SHARE * area:
            return True
    return False


def _objects(page: Any, kind: int) -> Iterator[Any]:
    # Images inside forms count too (some scanners wrap each page in a form XObject).
    return page.get_objects(filter=[kind], max_depth=3)

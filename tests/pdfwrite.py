"""Test PDFs, written with reportlab: text pages, and pages that amplify one Form XObject.

Also used by samples/make_pdf.py for the sample runbook.
"""

from pathlib import Path

from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

PAGE_W, PAGE_H = letter  # US letter, in points
MARGIN = 72  # one inch on every side
FONT, FONT_SIZE = "Helvetica", 11  # a standard font: readers supply it, nothing is embedded
LEADING = 14  # baseline-to-baseline distance, ~1.27x the font size for readability
MAX_W = PAGE_W - 2 * MARGIN
MAX_LINES = int((PAGE_H - 2 * MARGIN) // LEADING)


def write_pdf(path: Path, pages: list[str], *, title: str | None = None) -> None:
    """Write a PDF with one page per string.

    Text is laid out in Helvetica 11pt on US-letter pages, wrapped to the page width, with
    newlines as line breaks and blank lines as paragraph breaks; characters outside
    WinAnsiEncoding (cp1252) become '?', tabs 4 spaces. An empty string is a page with no
    text layer, as a scan's.

    Raises ValueError if ``pages`` is empty or a page's text does not fit on one page (the
    message names the 1-based page number): text never flows onto extra pages.
    """
    if not pages:
        raise ValueError("a PDF needs at least one page")
    canvas = Canvas(str(path), pagesize=letter)
    if title is not None:
        canvas.setTitle(title)
    for page_no, text in enumerate(pages, start=1):
        lines = _lines(text)
        if len(lines) > MAX_LINES:
            msg = f"page {page_no} does not fit: {len(lines)} lines, at most {MAX_LINES}"
            raise ValueError(msg)
        if any(lines):
            block = canvas.beginText(MARGIN, PAGE_H - MARGIN - FONT_SIZE)
            block.setFont(FONT, FONT_SIZE, LEADING)
            for line in lines:
                block.textLine(line)
            canvas.drawText(block)
        canvas.showPage()
    canvas.save()


def write_form_pdf(path: Path, text: str, *, draws: int, pages: int = 1) -> None:
    """Write a PDF whose every page draws one text Form XObject `draws` times.

    The form's text is stored once, compressed, so a small file extracts to
    `len(text) * draws * pages` characters: the shape of a text-amplification attack, for
    the ingest limits' tests.
    """
    canvas = Canvas(str(path), pagesize=letter, pageCompression=1)
    canvas.beginForm("amplified")
    canvas.setFont(FONT, FONT_SIZE)
    canvas.drawString(MARGIN, PAGE_H - MARGIN, _winansi(text))
    canvas.endForm()
    for _ in range(pages):
        for _ in range(draws):
            canvas.doForm("amplified")
        canvas.showPage()
    canvas.save()


def _lines(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    lines: list[str] = []
    for line in _winansi(text).split("\n"):
        # Lines that fit are kept verbatim so indentation and inner spacing survive.
        fits = stringWidth(line, FONT, FONT_SIZE) <= MAX_W
        lines += [line] if fits else simpleSplit(line, FONT, FONT_SIZE, MAX_W)
    return lines


def _winansi(text: str) -> str:
    return text.encode("cp1252", errors="replace").decode("cp1252")

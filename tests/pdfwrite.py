"""Dependency-free PDF 1.4 writer for the sample documents and test fixtures.

Content streams are left uncompressed so the output is easy to inspect and diff.
"""

from pathlib import Path

PAGE_W, PAGE_H = 612, 792  # US letter, in points
MARGIN = 72  # one inch on every side
FONT_SIZE = 11
LEADING = 14  # baseline-to-baseline distance, ~1.27x the font size for readability
MAX_W = PAGE_W - 2 * MARGIN
MAX_LINES = (PAGE_H - 2 * MARGIN) // LEADING
# One of the 14 standard fonts: readers supply it, so nothing needs embedding.
_FONT = b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica/Encoding/WinAnsiEncoding>>"
# String escape per byte: backslash the delimiters; octal for non-printables keeps the
# file 7-bit clean, so no raw CR/LF byte can be read as a line ending.
_ESC = [
    b"\\" + bytes([b]) if b in b"\\()" else bytes([b]) if 32 <= b <= 126 else b"\\%03o" % b
    for b in range(256)
]

# Helvetica advance widths (1/1000 em) for ASCII 32..126 from the standard AFM; other
# characters count as 556. Good enough for wrapping without shipping font metric files.
_WIDTHS = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
]  # fmt: skip


def _width(text: str) -> float:
    ems = sum(_WIDTHS[ord(c) - 32] if 32 <= ord(c) <= 126 else 556 for c in text)
    return ems * FONT_SIZE / 1000


def _wrap(line: str) -> list[str]:
    # Lines that fit are kept verbatim so indentation and inner spacing survive.
    if _width(line) <= MAX_W:
        return [line]
    out: list[str] = []
    cur = ""
    for word in line.split():
        joined = f"{cur} {word}" if cur else word
        if _width(joined) <= MAX_W:
            cur = joined
            continue
        if cur:
            out.append(cur)
        while _width(word) > MAX_W:  # an overlong token (URL, hash) is hard-split
            cut = max(i for i in range(1, len(word)) if _width(word[:i]) <= MAX_W)
            out.append(word[:cut])
            word = word[cut:]
        cur = word
    return [*out, cur] if cur else out


def _pdf_string(text: str) -> bytes:
    # WinAnsiEncoding is (essentially) cp1252; anything it cannot represent becomes '?'.
    raw = text.encode("cp1252", errors="replace")
    return b"(" + b"".join(_ESC[b] for b in raw) + b")"


def _content(page_no: int, text: str) -> bytes:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    lines = [w for line in text.split("\n") for w in _wrap(line)]
    if len(lines) > MAX_LINES:
        msg = f"page {page_no} does not fit: {len(lines)} lines, at most {MAX_LINES}"
        raise ValueError(msg)
    ops = [b"BT", b"/F1 %d Tf" % FONT_SIZE, b"%d TL" % LEADING]
    ops.append(b"%d %d Td" % (MARGIN, PAGE_H - MARGIN - FONT_SIZE))
    for i, line in enumerate(lines):
        if i:
            ops.append(b"T*")  # a real line move, so extractors emit a line break here
        if line:  # blank lines are just an empty line move (paragraph gap)
            ops.append(_pdf_string(line) + b" Tj")
    ops.append(b"ET")
    return b"\n".join(ops) + b"\n"


def write_pdf(path: Path, pages: list[str], *, title: str | None = None) -> None:
    """Write a PDF with one page per string.

    Text is laid out in Helvetica 11pt on US-letter pages, wrapped to the page width, with
    newlines as line breaks and blank lines as paragraph breaks. It is encoded with
    WinAnsiEncoding (cp1252, which covers all printable Latin-1); any character outside it
    (other scripts, emoji, ...) is replaced with '?'. Tabs become 4 spaces.

    Raises ValueError if ``pages`` is empty or a page's text does not fit on one page (the
    message names the 1-based page number): text never flows onto extra pages.
    """
    if not pages:
        raise ValueError("a PDF needs at least one page")
    # Objects: 1 catalog, 2 page tree, 3 font, then a (page, content) pair per page.
    n = len(pages)
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n))
    objs: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, n),
        _FONT,
    ]
    for i, text in enumerate(pages):
        stream = _content(i + 1, text)
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d]"
            b" /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % (PAGE_W, PAGE_H, 5 + 2 * i)
        )
        objs.append(b"<< /Length %d >>\nstream\n%sendstream" % (len(stream), stream))
    info = b"<< /Producer (tests.pdfwrite)"
    if title is not None:
        # UTF-16BE with a BOM is how PDF stores arbitrary Unicode in metadata strings.
        utf16 = ("\ufeff" + title).encode("utf-16-be")
        info += b" /Title <%s>" % utf16.hex().upper().encode()
    objs.append(info + b" >>")

    # The high-byte comment marks the file as binary for transfer tools (PDF spec 7.5.2).
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (num, body)
    xref, size = len(out), len(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)  # 20 bytes each
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (size, size - 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    Path(path).write_bytes(bytes(out))


def write_form_pdf(path: Path, text: str, *, draws: int, pages: int = 1) -> None:
    """Write a PDF whose every page draws one text Form XObject `draws` times.

    The form's text is stored once, compressed, so a file of a few KB extracts to
    `len(text) * draws * pages` characters: the shape of a text-amplification attack,
    for the ingest limits' tests.
    """
    import zlib

    form = b"BT /F1 %d Tf %d %d Td %s Tj ET\n" % (
        FONT_SIZE,
        MARGIN,
        PAGE_H - MARGIN,
        _pdf_string(text),
    )
    packed = zlib.compress(form, 9)
    content = b"q /Fm0 Do Q\n" * draws
    # Objects: 1 catalog, 2 page tree, 3 font, 4 form, 5 page content, then the pages.
    kids = b" ".join(b"%d 0 R" % (6 + i) for i in range(pages))
    objs: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        _FONT,
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 %d %d] /Resources << /Font << /F1 3 0 R"
        b" >> >> /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream"
        % (PAGE_W, PAGE_H, len(packed), packed),
        b"<< /Length %d >>\nstream\n%sendstream" % (len(content), content),
    ]
    objs += [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources << /Font << /F1 3 0 R"
        b" >> /XObject << /Fm0 4 0 R >> >> /Contents 5 0 R >>" % (PAGE_W, PAGE_H)
    ] * pages
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (num, body)
    xref, size = len(out), len(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    Path(path).write_bytes(bytes(out))

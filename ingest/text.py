"""Bytes to text: byte-order marks, UTF-8, BOM-less UTF-16, then a detected legacy encoding.

Exports from finance and health systems arrive as CP1252, Latin-1, UTF-16 or UTF-8 with a few
broken bytes; none of them may stop a batch. Files that are not text at all (an image renamed
.txt) are refused here, before anything tries to chunk them.
"""

from __future__ import annotations

import codecs
import re

from rag.errors import ParseError

# Bytes inspected to decide "binary or text" and to guess a legacy encoding.
SAMPLE_BYTES = 64 * 1024

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF",
    b"PK\x03\x04": "a ZIP archive (or an Office document)",
    b"\x1f\x8b": "a gzip archive",
    b"\x7fELF": "an executable",
    b"MZ": "a Windows executable",
}

# C0 controls other than tab, newline, vertical tab, form feed, carriage return and escape.
_CONTROL = frozenset(set(range(0x20)) - {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1B})


_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE
)


def declared_charset(data: bytes) -> str | None:
    """The encoding an HTML page declares in a <meta> tag near its start, if Python knows it."""
    match = _META_CHARSET.search(data[:4096])
    if not match:
        return None
    try:
        return codecs.lookup(match.group(1).decode("ascii")).name
    except (LookupError, UnicodeDecodeError):
        return None


def decode_text(data: bytes, name: str, declared: str | None = None) -> str:
    """Decode a text file's bytes, or raise ParseError when they are not text.

    `declared` is an encoding the file names itself (an HTML <meta charset>); a byte-order
    mark still wins, and bytes that do not decode with it fall back to detection.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    if declared and not declared.startswith("utf-16"):
        try:
            return data.decode(declared)
        except UnicodeDecodeError:
            pass
    utf16 = _bomless_utf16(data[:SAMPLE_BYTES])
    if utf16:
        return data.decode(utf16, errors="replace")
    _refuse_binary(data[:SAMPLE_BYTES], name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    mostly_utf8 = data.decode("utf-8", errors="replace")
    bad = mostly_utf8.count("\ufffd")
    good = sum(1 for ch in mostly_utf8 if ord(ch) > 0x7F) - bad
    # Legacy 8-bit text seldom forms valid multi-byte UTF-8 sequences (CJK double-byte text
    # does, by accident, about as often as not), so many valid ones per broken one means
    # UTF-8 with some damage, not another encoding.
    if good and bad * 10 <= good:
        return mostly_utf8
    return data.decode(_guess_legacy(data[:SAMPLE_BYTES]), errors="replace")


def _bomless_utf16(sample: bytes) -> str | None:
    """'utf-16-le' or 'utf-16-be' when every other byte is NUL, as in ASCII-range UTF-16."""
    if len(sample) < 8:
        return None
    even, odd = sample[0::2], sample[1::2]
    nul_even, nul_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    encoding = None
    if nul_odd > 0.4 and nul_even < 0.05:
        encoding = "utf-16-le"
    elif nul_even > 0.4 and nul_odd < 0.05:
        encoding = "utf-16-be"
    if encoding is None:
        return None
    # Binary data can show the same NUL pattern; real text decodes to printable characters.
    text = sample[: len(sample) // 2 * 2].decode(encoding, errors="replace")
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\t\n\r\f")
    return encoding if printable >= 0.95 * len(text) else None


def _refuse_binary(sample: bytes, name: str) -> None:
    for magic, kind in _MAGIC.items():
        if sample.startswith(magic):
            raise ParseError(f"{name}: this is {kind}, not text; rename or convert it", "binary")
    if b"\x00" in sample:
        raise ParseError(
            f"{name}: looks binary (NUL bytes), not text; skip or convert it", "binary"
        )
    controls = sum(1 for b in sample if b in _CONTROL)
    if sample and controls / len(sample) > 0.05:
        raise ParseError(
            f"{name}: looks binary (control bytes), not text; skip or convert it", "binary"
        )


def _guess_legacy(sample: bytes) -> str:
    """A legacy 8-bit or CJK encoding for `sample`, preferring cp1252 when it fits as well.

    The detector cannot tell Western code pages apart on short samples (it names cp1250 for
    French), while cp1252 is by far the most common of them; it keeps the last word whenever
    it reads the bytes as cleanly as the detector's favourite.
    """
    from charset_normalizer import from_bytes

    matches = [m for m in from_bytes(sample) if not m.encoding.startswith("utf")]
    if not matches:
        return "cp1252"
    best = min(m.chaos for m in matches)
    for match in matches:
        if match.chaos <= best + 0.01 and "cp1252" in (
            match.encoding,
            *match.could_be_from_charset,
        ):
            return "cp1252"
    return matches[0].encoding

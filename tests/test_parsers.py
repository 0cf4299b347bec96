from __future__ import annotations

from pathlib import Path

import pytest

from ingest.parsers import decode_text, parse_markdown, parse_pdf, parser_for
from rag.errors import ParseError
from rag.pdfwrite import write_pdf


def test_markdown_sections_keep_their_heading_path_and_offsets() -> None:
    text = (
        "Intro line.\n\n# Guide\nTop.\n## Install\nRun it.\n```\n# not a heading\n```\n"
        "### Linux\napt.\n## Use\nAsk.\n"
    )
    sections = parse_markdown(text)
    assert [s.heading for s in sections] == [
        "",
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
        "Guide > Use",
    ]
    assert "# not a heading" in sections[2].text
    for s in sections:
        assert text[s.char_start : s.char_start + len(s.text)] == s.text


def test_pdf_pages_are_numbered_from_one(tmp_path: Path) -> None:
    path = tmp_path / "three.pdf"
    write_pdf(path, ["First page text.", "", "Third page mentions kestrels."])
    sections = parse_pdf(path)
    # The empty page yields no section; numbering still follows the real pages.
    assert [s.page for s in sections] == [1, 3]
    assert "kestrels" in sections[1].text


@pytest.mark.parametrize(
    "data", [b"", b"%PDF-1.4\n garbage", b"\x00\x01\x02 not a pdf at all", b"%PDF-1.7\n" * 3]
)
def test_broken_pdfs_raise_a_parse_error_naming_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(data)
    try:
        sections = parse_pdf(path)
    except ParseError as e:
        assert "broken.pdf" in e.message
    else:
        assert sections == []


def test_text_decoding_handles_common_encodings() -> None:
    assert decode_text("café".encode(), "a") == "café"
    assert decode_text("\ufeffcafé".encode(), "a") == "café"
    assert decode_text("café".encode("utf-16"), "a") == "café"
    assert decode_text("café".encode("cp1252"), "a") == "café"
    with pytest.raises(ParseError, match="binary"):
        decode_text(b"\x7fELF\x00\x00\x00", "prog.txt")


def test_only_known_suffixes_have_a_parser() -> None:
    assert parser_for(Path("a.PDF")) is not None
    assert parser_for(Path("a.md")) is not None
    assert parser_for(Path("a.txt")) is not None
    assert parser_for(Path("a.docx")) is None

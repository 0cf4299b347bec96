from __future__ import annotations

from pathlib import Path

import pytest

from ingest.discovery import kind_of
from ingest.markup import parse_markdown, parse_rst
from ingest.parsers import parse_file
from ingest.text import decode_text
from ingest.webpage import parse_html
from rag.errors import ParseError
from tests.pdfwrite import write_pdf

from .corpus import write_encrypted_pdf

MAX_BYTES = 10 * 2**20


def _covers(text: str, sections: list) -> None:
    for s in sections:
        assert text[s.char_start : s.char_start + len(s.text)] == s.text


def test_markdown_sections_keep_their_heading_path_and_offsets() -> None:
    text = (
        "Intro line.\n\n# Guide\nTop.\n## Install\nRun it.\n```\n# not a heading\n```\n"
        "### Linux\napt.\n## Use\nAsk.\n\nSetext title\n------------\nUnder it.\n"
    )
    sections = parse_markdown(text)
    assert [s.heading for s in sections] == [
        "",
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
        "Guide > Use",
        "Guide > Setext title",
    ]
    assert "# not a heading" in sections[2].text
    _covers(text, sections)


def test_rst_titles_take_levels_in_order_of_appearance() -> None:
    text = (
        "=====\nGuide\n=====\n\nIntro.\n\nInstall\n-------\n\nRun it.\n\nLinux\n~~~~~\n\napt.\n\n"
        "Use\n---\n\nAsk.\n\n----\n\nAfter a transition.\n"
    )
    sections = parse_rst(text)
    assert [s.heading for s in sections] == [
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
        "Guide > Use",
    ]
    assert "After a transition." in sections[-1].text
    _covers(text, sections)


def test_html_keeps_main_text_and_headings_and_drops_boilerplate() -> None:
    html = """<!doctype html><html><head><title>Port guide</title>
    <style>body { color: red }</style><script>alert("x")</script></head><body>
    <header><a href="/">Home</a> | <a href="/about">About us</a></header>
    <nav><ul><li>Menu item</li></ul></nav>
    <div class="sidebar">Related links</div>
    <main>
      <h1>Port guide</h1><p>Ships dock at <b>berth&nbsp;4</b> &amp; unload.</p>
      <h2>Cranes</h2><p>Two gantry cranes.</p><ul><li>Crane A</li><li>Crane B</li></ul>
      <h3>Safety</h3><p>Wear a helmet.<br>Always.</p>
      <table><tr><th>Tide</th><th>Time</th></tr><tr><td>High</td><td>06:00</td></tr></table>
    </main>
    <footer>Copyright 2024</footer></body></html>"""
    sections = parse_html(html)
    text = "\n".join(s.text for s in sections)
    assert [s.heading for s in sections] == [
        "Port guide",
        "Port guide > Cranes",
        "Port guide > Cranes > Safety",
    ]
    assert "Ships dock at berth\xa04 & unload." in text
    assert "- Crane A" in text
    assert "Wear a helmet.\nAlways." in text
    assert "Tide | Time" in text
    for junk in ("alert", "color", "Menu item", "About us", "Related links", "Copyright"):
        assert junk not in text


def test_html_without_main_element_keeps_the_body_and_uses_the_title() -> None:
    sections = parse_html(
        "<html><head><title>Notes</title></head><body><p>Loose text.</p>"
        "<div class='navheader'>Prev Next</div><h2>Later</h2><p>More.</p></body></html>"
    )
    assert [(s.heading, s.text) for s in sections] == [
        ("Notes", "Loose text."),
        ("Later", "Later\n\nMore."),
    ]


def test_html_declared_charset_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_bytes(
        b'<html><head><meta charset="iso-8859-1"></head><body><p>Caf\xe9 cr\xe8me</p></body>'
    )
    assert parse_file(path, MAX_BYTES).sections[0].text == "Café crème"


def test_pdf_pages_are_numbered_from_one_and_empty_pages_reported(tmp_path: Path) -> None:
    path = tmp_path / "three.pdf"
    write_pdf(path, ["First page text.", "", "Third page mentions kestrels."])
    parsed = parse_file(path, MAX_BYTES)
    assert [s.page for s in parsed.sections] == [1, 3]
    assert parsed.pages == 3
    assert parsed.empty_pages == [2]
    assert "kestrels" in parsed.sections[1].text


def test_encrypted_pdfs_open_with_an_empty_password_only(tmp_path: Path) -> None:
    write_encrypted_pdf(tmp_path / "open.pdf", "")
    assert "vault" in parse_file(tmp_path / "open.pdf", MAX_BYTES).sections[0].text
    write_encrypted_pdf(tmp_path / "locked.pdf", "secret")
    with pytest.raises(ParseError) as e:
        parse_file(tmp_path / "locked.pdf", MAX_BYTES)
    assert e.value.reason == "encrypted"
    assert "password" in e.value.message


@pytest.mark.parametrize("data", [b"", b"%PDF-1.4\n garbage", b"%PDF-1.7\n" * 3])
def test_broken_pdfs_raise_a_parse_error_naming_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(data)
    with pytest.raises(ParseError) as e:
        parse_file(path, MAX_BYTES)
    assert "broken.pdf" in e.value.message
    assert e.value.reason == "malformed"


def test_files_over_the_size_limit_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * 2000)
    with pytest.raises(ParseError) as e:
        parse_file(path, 1000)
    assert e.value.reason == "too_large"


def test_text_decoding_handles_common_encodings() -> None:
    assert decode_text("café".encode(), "a") == "café"
    assert decode_text("\ufeffcafé".encode(), "a") == "café"
    assert decode_text("café".encode("utf-16"), "a") == "café"
    assert decode_text("Tidal tables für den Hafen".encode("utf-16-le"), "a").startswith("Tidal")
    assert decode_text("Le café coûte 3 € à Gênes".encode("cp1252"), "a") == (
        "Le café coûte 3 € à Gênes"
    )
    russian = "Привет, как дела? Сегодня хорошая погода. " * 3
    assert decode_text(russian.encode("cp1251"), "a") == russian
    damaged = "Grüße aus Köln. ".encode() * 20 + b"\xff" + b" Ende"
    assert decode_text(damaged, "a").endswith("Köln. \ufffd Ende")


@pytest.mark.parametrize(
    "data", [b"\x7fELF\x00\x00\x00", b"\x89PNG\r\n\x1a\n rest", b"abc\x01\x02\x03\x04\x05" * 20]
)
def test_binary_files_with_text_names_are_refused(data: bytes) -> None:
    with pytest.raises(ParseError) as e:
        decode_text(data, "prog.txt")
    assert e.value.reason == "binary"


def test_suffixes_decide_the_format() -> None:
    assert [kind_of(Path(n)) for n in ("a.PDF", "a.md", "a.txt", "a.htm", "a.rst", "a.docx")] == [
        "pdf",
        "markdown",
        "text",
        "html",
        "rst",
        None,
    ]

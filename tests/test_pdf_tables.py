"""PDF tables as Markdown: pages of gnuplot's manual (Debian `gnuplot-doc`), whose tables
draw only a box and the rules under title and header, become one table chunk each (or rows
under a repeated head where a table outgrows a chunk), found and cited for one cell."""

from __future__ import annotations

from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from ingest.chunker import Window, table_pieces
from ingest.parsers import parse_file
from ingest.run import run_ingest
from rag.config import RetrievalSettings, Settings
from rag.embed.embedder import Embedder
from rag.index.store import Store
from rag.qa.retrieval import Retriever

from .corpus import debian_document

GNUPLOT = "usr/share/doc/gnuplot/gnuplot.pdf"
# Page 134 (prose), 135 (the border bits), 151 (gprintf formats: longer than one chunk),
# 152 (date formats).
PAGES = [134, 135, 151, 152]


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reader = PdfReader(debian_document("gnuplot-doc", GNUPLOT))
    writer = PdfWriter()
    for page in PAGES:
        writer.add_page(reader.pages[page - 1])
    path = tmp_path_factory.mktemp("gnuplot") / "gnuplot-excerpt.pdf"
    with path.open("wb") as f:
        writer.write(f)
    return path


def test_a_ruled_table_becomes_one_markdown_section_with_its_caption(manual: Path) -> None:
    parsed = parse_file(manual, 2**28)
    assert parsed.tables == 3
    (border,) = [s for s in parsed.sections if s.heading == "Graph Border Encoding"]
    assert border.page == 2
    lines = border.text.splitlines()
    assert lines[:4] == [
        "Table: Graph Border Encoding",
        "",
        "| Bit | plot | splot |",
        "|---|---|---|",
    ]
    assert "| 512 | no effect | top right back |" in lines
    assert "| 4096 | polar | no effect |" in lines
    # The text around the table stays, without the table's cells run into it.
    after = [s for s in parsed.sections if s.page == 2 and not s.heading]
    assert any("The default setting is 31" in s.text for s in after)
    assert not any("top right back" in s.text for s in after)


def test_a_table_longer_than_a_chunk_repeats_its_head_over_each_group_of_rows(
    manual: Path, embedder: Embedder
) -> None:
    parsed = parse_file(manual, 2**28)
    (formats,) = [s for s in parsed.sections if s.heading.startswith("Tic-mark label")]
    window = Window.fit(embedder, 180, 30)
    pieces = table_pieces(formats.text, embedder, window)
    assert pieces is not None and len(pieces) >= 2
    head = "| Format | Explanation |\n|---|---|\n"
    rows = []
    for text, start, end in pieces:
        assert head in text and embedder.count_tokens(text) - 2 <= window.budget
        rows += [line for line in formats.text[start:end].splitlines() if line.startswith("| %")]
    # Every row once, in order.
    assert rows == [line for line in formats.text.splitlines() if line.startswith("| %")]


def test_a_question_about_one_cell_retrieves_its_table(
    manual: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    report = run_ingest(
        [manual], collection="default", chunking=settings.chunking, embedder=embedder, store=store
    )
    assert report.failed == [] and report.tables == 3
    retriever = Retriever(store, embedder)
    best = retriever.search("Which format specifier gives a multiple of pi?", "default", 4)[0]
    # The row sits in the table's second chunk, under the table's repeated head.
    assert (best.page, best.heading) == (3, "Tic-mark label numerical format specifiers")
    assert "| %P | multiple of pi |" in best.text and "| Format | Explanation |" in best.text
    # The prose about `set border` on the page before ranks first here; the table chunk is
    # among the passages an answer gets (retrieval.k = 4), whole, with its page.
    question = "Which bit of set border is the top right back edge in splot?"
    hits = retriever.search(question, "default", RetrievalSettings().k)
    (table,) = [h for h in hits if h.heading == "Graph Border Encoding"]
    assert table.page == 2 and "| 512 | no effect | top right back |" in table.text
    assert table.text.startswith("Table: Graph Border Encoding\n\n| Bit | plot | splot |")

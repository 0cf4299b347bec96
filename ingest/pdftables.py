"""Tables on PDF pages as Markdown, so that one table is one chunk and its cells keep their row.

pdfplumber finds tables by their rules (lines and boxes). Many real tables draw only a box
and the rules under the title and the header (LaTeX's usual style: gnuplot's manual), which
pdfplumber returns as one tall cell per column; so the cells are rebuilt from the words
inside each table's area: a row per line of text, columns where every row leaves a gap.
A line whose first column is empty continues the row above (a wrapped cell).

Only pages that draw some rules are handed to pdfplumber (pypdfium2 counts them in
microseconds; pdfplumber's layout analysis costs about 80 ms a page).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# A page needs this many rules (thin lines at least RULE_MIN_PT long, or rectangles) before
# pdfplumber looks for tables: about 1 page in 14 of gnuplot's manual, every table page among
# them, where any drawn path would send 1 in 4 (figures, underlines).
MIN_RULES = 2
RULE_MIN_PT = 40.0
RULE_MAX_THICKNESS_PT = 2.0
# A path of at most this many segments drawn over a box is a rectangle (a cell, a frame).
RECT_MAX_SEGMENTS = 5
# Words closer than this many times their height belong to one cell; wider gaps part columns.
CELL_GAP_EMS = 0.9
# Words whose tops differ by less than this share of their height are on one line.
LINE_TOLERANCE = 0.5
# Letters closer than this (points) are one word; pdfplumber's 3 glues TeX's tight
# justified lines into one word ("Usingtheoptional<linestyle>,"); 1.5 keeps them apart.
X_TOLERANCE = 1.5
# Glyphs without a Unicode mapping come out as "(cid:112)": noise to a reader and a search.
_UNMAPPED = re.compile(r"\(cid:\d+\)")


@dataclass(frozen=True, slots=True)
class Table:
    top: float  # PDF points from the top of the page, as pdfplumber measures
    bottom: float
    bbox: tuple[float, float, float, float]
    caption: str
    rows: list[list[str]]  # the first row is the header

    def markdown(self) -> str:
        width = max(len(r) for r in self.rows)
        lines = [f"Table: {self.caption}", ""] if self.caption else []
        for n, row in enumerate(self.rows):
            cells = [_cell(c) for c in row] + [""] * (width - len(row))
            lines.append("| " + " | ".join(cells) + " |")
            if n == 0:
                lines.append("|" + "---|" * width)
        return "\n".join(lines)


def has_rules(page: Any) -> bool:
    """Whether the pypdfium2 `page` draws enough rules or boxes to hold a ruled table."""
    import pypdfium2.raw as pdfium_c

    rules = 0
    for path in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_PATH], max_depth=2):
        left, bottom, right, top = path.get_bounds()
        thin, long = sorted((right - left, top - bottom))
        if thin <= RULE_MAX_THICKNESS_PT:
            rules += long >= RULE_MIN_PT
        else:
            rules += 0 < pdfium_c.FPDFPath_CountSegments(path.raw) <= RECT_MAX_SEGMENTS
        if rules >= MIN_RULES:
            return True
    return False


def find_tables(page: Any) -> list[Table]:
    """The tables on the pdfplumber `page` with at least two columns and a row under the header."""
    tables = []
    for found in page.find_tables():
        table = _rebuild(page, found.bbox)
        if table is not None:
            tables.append(table)
    return sorted(tables, key=lambda t: t.top)


def text_around(page: Any, tables: list[Table]) -> Iterator[tuple[str, Table | None]]:
    """The page in reading order: (text between tables, None) and (markdown, table) pieces."""
    kept = page.filter(lambda obj: not any(_inside(obj, t.bbox) for t in tables))
    top = 0.0
    for table in [*tables, None]:
        bottom = page.height if table is None else table.top
        if bottom > top:
            piece = kept.crop((0, top, page.width, bottom), relative=False, strict=False)
            text = _UNMAPPED.sub("", piece.extract_text(x_tolerance=X_TOLERANCE) or "")
            if text.strip():
                yield text, None
        if table is not None:
            yield table.markdown(), table
            top = max(top, table.bottom)


def _rebuild(page: Any, bbox: tuple[float, float, float, float]) -> Table | None:
    x0, top, x1, bottom = bbox
    # Text may stick out of a box drawn too tight: take whole words whose middle is inside.
    words = [
        w
        for w in page.extract_words(x_tolerance=X_TOLERANCE)
        if x0 - 2 <= (w["x0"] + w["x1"]) / 2 <= x1 + 2
        and top - 1 <= w["top"]
        and w["bottom"] <= bottom + 1
    ]
    lines = _lines(words)
    if len(lines) < 2:
        return None
    columns = _columns([p for line in lines if len(line) > 1 for p in line])
    if len(columns) < 2:
        return None
    caption_parts: list[str] = []
    rows: list[list[str]] = []
    for line in lines:
        cells = [""] * len(columns)
        for x_start, x_end, text in line:
            column = _column_of((x_start + x_end) / 2, columns)
            cells[column] = f"{cells[column]} {text}".strip()
        if not rows and len(line) == 1:
            caption_parts.append(line[0][2])  # a title above the header
        elif rows and not cells[0] and len(rows) > 1:
            # A wrapped cell continues the row above (never the header).
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    if len(rows) < 2:
        return None
    return Table(
        top=min(w["top"] for w in words),
        bottom=max(w["bottom"] for w in words),
        bbox=(x0 - 2, top - 1, x1 + 2, bottom + 1),
        caption=" ".join(caption_parts),
        rows=rows,
    )


def _lines(words: list[dict[str, Any]]) -> list[list[tuple[float, float, str]]]:
    """Words grouped into lines (top to bottom), each line's words merged into phrases."""
    lines: list[list[dict[str, Any]]] = []
    for word in sorted(words, key=lambda w: (w["top"], w["x0"])):
        height = word["bottom"] - word["top"]
        if lines and abs(word["top"] - lines[-1][0]["top"]) <= LINE_TOLERANCE * height:
            lines[-1].append(word)
        else:
            lines.append([word])
    phrased = []
    for line in lines:
        phrases: list[tuple[float, float, str]] = []
        for word in sorted(line, key=lambda w: w["x0"]):
            gap = CELL_GAP_EMS * (word["bottom"] - word["top"])
            if phrases and word["x0"] - phrases[-1][1] < gap:
                start, _, text = phrases[-1]
                phrases[-1] = (start, word["x1"], f"{text} {word['text']}")
            else:
                phrases.append((word["x0"], word["x1"], word["text"]))
        phrased.append(phrases)
    return phrased


def _columns(phrases: list[tuple[float, float, str]]) -> list[tuple[float, float]]:
    """Column extents: the x ranges the phrases of multi-cell lines cover, overlaps joined."""
    spans: list[tuple[float, float]] = []
    for start, end, _ in sorted(phrases):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def _column_of(x: float, columns: list[tuple[float, float]]) -> int:
    return min(
        range(len(columns)),
        key=lambda i: (
            0.0
            if columns[i][0] <= x <= columns[i][1]
            else min(abs(x - columns[i][0]), abs(x - columns[i][1]))
        ),
    )


def _inside(obj: dict[str, Any], bbox: tuple[float, float, float, float]) -> bool:
    if "x0" not in obj or "top" not in obj:
        return False
    x = (obj["x0"] + obj["x1"]) / 2
    y = (obj["top"] + obj["bottom"]) / 2
    return bbox[0] <= x <= bbox[2] and bbox[1] <= y <= bbox[3]


def _cell(text: str) -> str:
    return " ".join(_UNMAPPED.sub("", text).replace("|", "\\|").split())

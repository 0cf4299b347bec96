"""Lightweight markup split at its section titles: Markdown and reStructuredText.

Each section keeps the path of titles above it ("Guide > Install > Linux") and its offset in
the file's text, so a chunk can say where it came from. The text is kept as written (markup
included): it is what the reader of a citation recognises.
"""

from __future__ import annotations

import re
import string

from rag.records import Section

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_RST_ADORNMENT = re.compile(r"^([" + re.escape(string.punctuation) + r"])\1{2,}[ \t]*$")


class _Outline:
    """Collects sections as titles arrive; a title closes the section before it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.start = 0

    def title(self, offset: int, level: int, title: str) -> None:
        self.close(offset)
        self.path = [(lvl, t) for lvl, t in self.path if lvl < level] + [(level, title.strip())]
        self.start = offset

    def close(self, end: int) -> None:
        body = self.text[self.start : end]
        if body.strip():
            heading = " > ".join(t for _, t in self.path)
            self.sections.append(Section(text=body, heading=heading, char_start=self.start))

    def finish(self) -> list[Section]:
        self.close(len(self.text))
        return self.sections


def _line_offsets(text: str) -> tuple[list[str], list[int]]:
    lines = text.splitlines(keepends=True)
    offsets: list[int] = []
    offset = 0
    for line in lines:
        offsets.append(offset)
        offset += len(line)
    return lines, offsets


def parse_markdown(text: str) -> list[Section]:
    """Split at ATX (`## Title`) and setext (`Title` over `===`) headings outside code fences."""
    outline = _Outline(text)
    lines, offsets = _line_offsets(text)
    bare = [line.rstrip("\r\n") for line in lines]
    in_fence = False
    for i, line in enumerate(bare):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        atx = _ATX.match(line)
        if atx:
            outline.title(offsets[i], len(atx.group(1)), atx.group(2))
            continue
        underline = _SETEXT.match(bare[i + 1]) if i + 1 < len(bare) else None
        # A one-line paragraph over '---' is a level-2 title in CommonMark, not a rule.
        if (
            underline
            and line.strip()
            and not line.startswith((" " * 4, "\t"))
            and (i == 0 or not bare[i - 1].strip())
        ):
            outline.title(offsets[i], 1 if underline.group(1)[0] == "=" else 2, line)
    return outline.finish()


def parse_rst(text: str) -> list[Section]:
    """Split at reStructuredText section titles (underlined, optionally overlined).

    reST has no fixed levels: the first adornment style seen is level 1, the next new one
    level 2, and so on, as docutils assigns them.
    """
    outline = _Outline(text)
    lines, offsets = _line_offsets(text)
    bare = [line.rstrip("\r\n") for line in lines]
    styles: list[tuple[str, bool]] = []
    i = 0
    while i < len(bare):
        overline = _RST_ADORNMENT.match(bare[i])
        if overline and i + 2 < len(bare):
            title, under = bare[i + 1], _RST_ADORNMENT.match(bare[i + 2])
            if title.strip() and under and under.group(1) == overline.group(1):
                level = _rst_level(styles, (overline.group(1), True))
                outline.title(offsets[i], level, title)
                i += 3
                continue
        under = _RST_ADORNMENT.match(bare[i + 1]) if i + 1 < len(bare) else None
        line = bare[i]
        if (
            under
            and line.strip()
            and not line[0].isspace()
            and len(bare[i + 1].rstrip()) >= len(line.rstrip())
            and not _RST_ADORNMENT.match(line)
        ):
            outline.title(offsets[i], _rst_level(styles, (under.group(1), False)), line)
            i += 2
            continue
        i += 1
    return outline.finish()


def _rst_level(styles: list[tuple[str, bool]], style: tuple[str, bool]) -> int:
    if style not in styles:
        styles.append(style)
    return styles.index(style) + 1

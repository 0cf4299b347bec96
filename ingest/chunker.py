"""Split a section into overlapping windows of the embedding model's own tokens.

Windows end at the strongest boundary available in their second half (a blank line, then a
line end, then a sentence end, then a word) and the next one starts `overlap` tokens back,
moved to the start of a word. Every window is re-counted with the model's tokenizer, special
tokens included, and shrunk if needed, so the embedder never truncates a chunk. Windows
never cross a section: pages and headings are section boundaries. `make_chunks` turns a
document's sections into its chunks, a table cut between its rows (`table_pieces`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from rag.records import Chunk, Section

# Text is tokenized in blocks of about this many characters, cut at whitespace, so memory
# stays bounded for one-line files of many megabytes.
BLOCK_CHARS = 64_000
# A window also ends before it spans more than this many characters per token of budget;
# only runs of 100+ letters without a space (which the tokenizer makes one [UNK]) reach it.
MAX_CHARS_PER_TOKEN = 12
# The next window's start may move this many tokens further back to begin on a word.
ALIGN_SLACK_TOKENS = 8

# Latin and CJK (full-width) sentence punctuation.
_SENTENCE_END = frozenset(".!?;:\u3002\uff01\uff1f\uff1b\uff1a")
_PARAGRAPH, _LINE, _SENTENCE, _WORD, _INSIDE_WORD = 4, 3, 2, 1, 0
# A Markdown table's rule under its header: | --- | :--: | ...
_TABLE_RULE = re.compile(r"^\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*$")


class Tokenizer(Protocol):
    """What the chunker needs from the embedding model's tokenizer (see rag.embed.embedder)."""

    max_input_tokens: int

    def token_offsets(self, text: str) -> list[tuple[int, int, bool]]:
        """(char_start, char_end, starts_a_word) per token, special tokens left out."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text`, special tokens included."""
        ...


@dataclass(frozen=True, slots=True)
class Span:
    char_start: int  # offsets into the section text
    char_end: int
    tokens: int  # tokens of the window, special tokens not counted
    first_token: int  # index of the window's first token in the section's token sequence
    end_token: int  # one past its last token


@dataclass(frozen=True, slots=True)
class Window:
    """Chunk sizes in tokens, already fitted to the model's input limit."""

    budget: int
    overlap: int
    max_input: int

    @classmethod
    def fit(cls, tokenizer: Tokenizer, chunk_tokens: int, overlap_tokens: int) -> Window:
        specials = tokenizer.count_tokens("")
        budget = max(1, min(chunk_tokens, tokenizer.max_input_tokens - specials))
        return cls(budget, min(overlap_tokens, budget - 1), tokenizer.max_input_tokens)

    @property
    def min_fill(self) -> int:
        # Half a window at least, and always past the overlap so every window adds text.
        return min(self.budget, max(self.overlap + 1, self.budget // 2))


def table_pieces(
    text: str, tokenizer: Tokenizer, window: Window
) -> list[tuple[str, int, int]] | None:
    """A Markdown table too long for one window, as pieces of whole rows that each repeat
    the table's head (caption, header, rule), so every cell keeps its column's name.

    Returns (piece text, char_start, char_end) per piece, the offsets those of its rows in
    `text` (the first piece's start at the head); None when `text` is not one table
    (optionally after a caption line) or fits one window, and normal windows apply.
    """
    lines = text.split("\n")
    rule = next((i for i, line in enumerate(lines) if _TABLE_RULE.match(line.strip())), -1)
    if rule < 1 or not lines[rule - 1].lstrip().startswith("|"):
        return None
    rows_start = sum(len(line) + 1 for line in lines[: rule + 1])
    body = lines[rule + 1 :]
    if not body or not all(line.lstrip().startswith("|") for line in body if line.strip()):
        return None
    specials = tokenizer.count_tokens("")
    if tokenizer.count_tokens(text) - specials <= window.budget:
        return None
    head = text[:rows_start]

    def fits(start: int, end: int) -> bool:
        piece = head + text[start:end].rstrip("\n")
        return tokenizer.count_tokens(piece) - specials <= window.budget

    pieces: list[tuple[str, int, int]] = []
    start = end = rows_start  # the rows of the piece being filled: text[start:end]
    for line in body:
        line_end = min(end + len(line) + 1, len(text))
        if end > start and not fits(start, line_end):
            pieces.append(_piece(text, head, start, end, rows_start))
            start = end
        end = line_end
    if end > start:
        pieces.append(_piece(text, head, start, end, rows_start))
    # A row too long to share a window with the head: ordinary windows, head or not.
    if any(tokenizer.count_tokens(t) - specials > window.budget for t, _, _ in pieces):
        return None
    return pieces


def _piece(text: str, head: str, start: int, end: int, rows_start: int) -> tuple[str, int, int]:
    rows = text[start:end].rstrip("\n")
    if start == rows_start:
        return text[: start + len(rows)], 0, start + len(rows)
    return head + rows, start, start + len(rows)


def split_text(text: str, tokenizer: Tokenizer, window: Window) -> list[Span]:
    """Windows over `text` that together cover every token of it."""
    return list(_windows(text, tokenizer, window))


def iter_spans(text: str, tokenizer: Tokenizer, window: Window) -> Iterator[Span]:
    """split_text one window at a time: a caller over its budget stops tokenizing early."""
    return _windows(text, tokenizer, window)


def _windows(text: str, tokenizer: Tokenizer, window: Window) -> Iterator[Span]:
    stream = _tokens(text, tokenizer)
    buf: list[tuple[int, int, bool]] = []  # tokens from global index `base` on
    base = 0
    first = 0
    exhausted = False
    max_chars = window.budget * MAX_CHARS_PER_TOKEN
    while True:
        # One token past the window is needed to judge the boundary at its end.
        while not exhausted and base + len(buf) <= first + window.budget:
            token = next(stream, None)
            if token is None:
                exhausted = True
            else:
                buf.append(token)
        available = base + len(buf)
        if first >= available:
            return

        def tok(i: int, base: int = base) -> tuple[int, int, bool]:
            return buf[i - base]

        start = tok(first)[0]
        hi = min(first + window.budget, available)
        while hi > first and tok(hi - 1)[1] - start > max_chars:
            hi -= 1
        if hi == first:
            # One token longer than a whole window of text: cut it by characters.
            yield from _cut(text, tok(first), first, max_chars, tokenizer)
            end = first + 1
            next_first = end
        else:
            if hi == available and exhausted:
                end = hi
            else:
                lo = min(hi, first + window.min_fill)
                end = max(range(lo, hi + 1), key=lambda e: (_level(text, buf, base, e), e))
            end = _fit(text, tokenizer, window, buf, base, first, end)
            yield Span(start, tok(end - 1)[1], end - first, first, end)
            if end == available and exhausted:
                return
            next_first = end - window.overlap if end - window.overlap > first else end
            floor = max(first + 1, next_first - ALIGN_SLACK_TOKENS)
            aligned = next_first
            while aligned > floor and not tok(aligned)[2]:
                aligned -= 1
            if tok(aligned)[2]:
                next_first = aligned
            # The next window must reach past this one; share less where characters cap it.
            while next_first < end and tok(end)[1] - tok(next_first)[0] > max_chars:
                next_first += 1
        first = next_first
        del buf[: first - base]
        base = first


def _fit(
    text: str,
    tokenizer: Tokenizer,
    window: Window,
    buf: list[tuple[int, int, bool]],
    base: int,
    first: int,
    end: int,
) -> int:
    """Move `end` back until the model's own count of the window's text fits its input."""
    start = buf[first - base][0]
    while end > first + 1:
        if tokenizer.count_tokens(text[start : buf[end - 1 - base][1]]) <= window.max_input:
            return end
        end -= 1
        while end > first + 1 and _level(text, buf, base, end) == _INSIDE_WORD:
            end -= 1
    return end


def _cut(
    text: str, token: tuple[int, int, bool], index: int, max_chars: int, tokenizer: Tokenizer
) -> Iterator[Span]:
    specials = tokenizer.count_tokens("")
    for piece_start in range(token[0], token[1], max_chars):
        piece_end = min(piece_start + max_chars, token[1])
        count = tokenizer.count_tokens(text[piece_start:piece_end]) - specials
        yield Span(piece_start, piece_end, count, index, index + 1)


def _level(text: str, buf: list[tuple[int, int, bool]], base: int, end: int) -> int:
    """How strong a boundary lies between token `end - 1` and token `end`."""
    if end - base >= len(buf):
        return _PARAGRAPH  # the end of the text
    prev_end = buf[end - 1 - base][1]
    next_start, _, starts_word = buf[end - base]
    gap = text[prev_end:next_start]
    newlines = gap.count("\n")
    if newlines >= 2:
        return _PARAGRAPH
    if newlines == 1:
        return _LINE
    if starts_word and prev_end > 0 and text[prev_end - 1] in _SENTENCE_END:
        return _SENTENCE
    return _WORD if starts_word else _INSIDE_WORD


def _tokens(text: str, tokenizer: Tokenizer) -> Iterator[tuple[int, int, bool]]:
    for block_start, block_end in _blocks(text):
        for start, end, starts_word in tokenizer.token_offsets(text[block_start:block_end]):
            yield block_start + start, block_start + end, starts_word


def _blocks(text: str) -> Iterator[tuple[int, int]]:
    """Consecutive ranges of at most BLOCK_CHARS, cut after whitespace where there is some."""
    start = 0
    while start < len(text):
        end = min(start + BLOCK_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            if cut > start:
                end = cut + 1
        yield start, end
        start = end


def make_chunks(
    doc_id: str,
    source: str,
    sections: list[Section],
    tokenizer: Tokenizer,
    window: Window,
    limit: int | None = None,
) -> list[Chunk]:
    """The document's chunks; with `limit`, stops at limit + 1 (a file over its budget)."""
    chunks: list[Chunk] = []
    for section in sections:
        if limit is not None and len(chunks) > limit:
            break
        for text, char_start, char_end in _pieces(section, tokenizer, window):
            if limit is not None and len(chunks) > limit:
                break
            if not text.strip():
                continue
            index = len(chunks)
            digest = hashlib.sha256(f"{doc_id}\0{index}\0{text}".encode()).hexdigest()[:24]
            chunks.append(
                Chunk(
                    chunk_id=digest,
                    doc_id=doc_id,
                    source=source,
                    page=section.page,
                    heading=section.heading,
                    text=text,
                    char_start=section.char_start + char_start,
                    char_end=section.char_start + char_end,
                    index=index,
                )
            )
    return chunks


def _pieces(
    section: Section, tokenizer: Tokenizer, window: Window
) -> Iterator[tuple[str, int, int]]:
    """(text, char_start, char_end) of each chunk of `section`: windows of its text, or for
    a table too long for one window, groups of rows each under the table's head."""
    if section.text.lstrip().startswith(("|", "Table: ")):
        table = table_pieces(section.text, tokenizer, window)
        if table is not None:
            yield from table
            return
    for span in iter_spans(section.text, tokenizer, window):
        yield section.text[span.char_start : span.char_end], span.char_start, span.char_end

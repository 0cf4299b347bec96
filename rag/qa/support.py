"""Check each answer sentence against the passages it cites: find the span that supports it.

Small local models invent things, and a `[n]` marker beside an invented sentence makes it
look true. This is a lexical check, fast enough for every answer:

- The answer is split into sentences; a sentence's `[n]` markers name the passages it is
  checked against. A sentence without markers is checked against the passages the answer
  cites as a whole, or against every passage of the prompt when the answer cites none.
- A sentence's key tokens (numbers, names, commands: any token with a digit, with `-_./`
  inside, written in backticks, or capitalised after the sentence's first word) must each
  appear in one of those passages, or the sentence is unsupported whatever else matches.
- Its content words (normalised, lightly stemmed, stop words dropped) must be covered at
  least MIN_COVERAGE by one to MAX_SPAN_SENTENCES consecutive sentences of one passage: the
  best such window is the supporting span, with offsets into the passage's text.

A sentence with no content word ("Sure.") makes no claim: supported, with no span.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from rag.qa.citations import MARKER
from rag.records import CheckedSentence, Span

# The share of a sentence's content words that its supporting span must hold.
MIN_COVERAGE = 0.5
# The most consecutive passage sentences one span may join (a fact spread over a list item
# and the line before it).
MAX_SPAN_SENTENCES = 3

# Words and code-like tokens: `harbor-db`, `ledger-db.conf`, `10.0.0.1`, `snake_case`.
_TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_\-./]*[A-Za-z0-9])?")
_BACKTICKED = re.compile(r"`([^`]+)`")
# A sentence ends at . ! or ? before whitespace, with any markers that follow the stop (a
# colon does not end one: "The command is: harbor-db promote." is one claim).
_STOP = re.compile(r"[.!?](?:\s*\[[\d\s,;]+\])*(?=\s|$)")
# A newline before a list item or a blank line ends a sentence too.
_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:\d{1,3}[.)]|[-*\u2022])\s)")
_LIST_NUMBER = re.compile(r"\d{1,3}[.)]")
_LIST_PREFIX = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+")

_STOP_TEXT = """a about above after again all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each either
    else for from further had has have having he her here hers him his how i if in into is
    it its itself just may me might more most must my no nor not now of off on once only or
    other our ours out over own per same shall she should so some such than that the their
    theirs them then there these they this those through to too under until up upon us use
    used using very via was we were what when where whether which while who whom whose why
    will with within without would yes you your yours sure okay ok thanks please hello"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


class Source(Protocol):
    """A passage or a citation: what a span is found in (read-only, as both are frozen)."""

    @property
    def source(self) -> str: ...

    @property
    def page(self) -> int | None: ...

    @property
    def chunk_id(self) -> str: ...

    @property
    def text(self) -> str: ...


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace trimmed; list numbers ("4.")
    stay with the item they number."""
    cuts = {m.end() for m in _STOP.finditer(text)} | {m.start() for m in _BREAK.finditer(text)}
    spans: list[tuple[int, int]] = []
    start = 0
    for cut in [*sorted(cuts), len(text)]:
        piece = text[start:cut]
        lead = len(piece) - len(piece.lstrip())
        s, e = start + lead, start + len(piece.rstrip())
        start = cut
        if s >= e:
            continue
        if spans and _LIST_NUMBER.fullmatch(text[spans[-1][0] : spans[-1][1]]):
            s = spans.pop()[0]
        spans.append((s, e))
    return spans


def stem(word: str) -> str:
    """Lower case, and the commonest English endings off a plain word (light, on purpose:
    `promotes` meets `promote`, `minutes` meets `minute`)."""
    w = word.lower()
    if not w.isalpha() or len(w) <= 4:
        return w
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if w.endswith(suffix) and not w.endswith("ss") and len(w) - len(suffix) >= 3:
            return w[: -len(suffix)] + repl
    return w


def content_words(text: str) -> set[str]:
    """The stemmed tokens of `text` that carry meaning (no stop words, no single letters)."""
    return {stem(t) for t in _TOKEN.findall(text) if len(t) > 1 and t.lower() not in STOP_WORDS}


def key_tokens(sentence: str) -> list[str]:
    """The numbers, names and commands of an answer sentence (markers and list numbers
    left out): what must appear in a cited passage for the sentence to stand."""
    text = _LIST_PREFIX.sub("", MARKER.sub("", sentence))
    keys = [t for code in _BACKTICKED.findall(text) for t in _TOKEN.findall(code)]
    for i, token in enumerate(_TOKEN.findall(text)):
        code_like = any(c.isdigit() for c in token) or any(c in "-_./" for c in token)
        name = i > 0 and token[0].isupper() and len(token) > 1
        if code_like or (name and token.lower() not in STOP_WORDS):
            keys.append(token)
    return list(dict.fromkeys(keys))


# Small numbers as sources often write them: "3" in an answer stands on "three".
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]


def _found(key: str, tokens: set[str], stems: set[str]) -> bool:
    low = key.lower()
    if low in tokens or stem(low) in stems:
        return True
    if low.isdigit() and int(low) < len(NUMBER_WORDS) and NUMBER_WORDS[int(low)] in tokens:
        return True
    # "15-minute" for "15 minutes": a number joined to its unit.
    parts = re.split(r"-", low)
    return (
        len(parts) > 1
        and any(p.isdigit() for p in parts)
        and all(p in tokens or stem(p) in stems for p in parts)
    )


def missing_keys(sentence: str, sources: Sequence[Source]) -> list[str]:
    """The key tokens of `sentence` that none of `sources` holds."""
    tokens = {t.lower() for s in sources for t in _TOKEN.findall(s.text)}
    stems = {stem(t) for t in tokens}
    return [k for k in key_tokens(sentence) if not _found(k, tokens, stems)]


def best_span(words: set[str], sources: Sequence[Source]) -> tuple[float, Span | None]:
    """The window of consecutive passage sentences that holds most of `words`, and the
    share it holds; fewer sentences win a tie."""
    best: tuple[float, int, Span | None] = (0.0, 0, None)
    for source in sources:
        sentences = split_sentences(source.text)
        held = [content_words(source.text[s:e]) for s, e in sentences]
        for i in range(len(sentences)):
            covered: set[str] = set()
            for j in range(i, min(i + MAX_SPAN_SENTENCES, len(sentences))):
                covered |= held[j] & words
                share = len(covered) / len(words)
                if share > best[0] or (share == best[0] and (best[2] is None or j - i < best[1])):
                    start, end = sentences[i][0], sentences[j][1]
                    span = Span(
                        source.source,
                        source.page,
                        source.chunk_id,
                        start,
                        end,
                        source.text[start:end],
                    )
                    best = (share, j - i, span)
    return best[0], best[2]


def check_sentence(
    sentence: str, cited: Sequence[int], sources: Sequence[Source]
) -> CheckedSentence:
    """Whether `sources` (those the sentence is checked against) support `sentence`."""
    words = content_words(_LIST_PREFIX.sub("", MARKER.sub("", sentence)))
    if not words:
        return CheckedSentence(sentence, True, list(cited), None)
    if not sources or missing_keys(sentence, sources):
        return CheckedSentence(sentence, False, list(cited), None)
    share, span = best_span(words, sources)
    if share < MIN_COVERAGE:
        return CheckedSentence(sentence, False, list(cited), None)
    return CheckedSentence(sentence, True, list(cited), span)


def check_answer(answer: str, passages: Sequence[Source]) -> list[CheckedSentence]:
    """Every sentence of `answer` checked against the passages it cites; `passages` are
    the prompt's sources in order, so marker [n] names passages[n - 1]."""
    sentences = [answer[s:e] for s, e in split_sentences(answer)]
    marked = [_markers(s, len(passages)) for s in sentences]
    cited_anywhere = sorted({n for ns in marked for n in ns})
    fallback = [passages[n - 1] for n in cited_anywhere] or list(passages)
    return [
        check_sentence(s, ns, [passages[n - 1] for n in ns] if ns else fallback)
        for s, ns in zip(sentences, marked, strict=True)
    ]


def _markers(sentence: str, sources: int) -> list[int]:
    numbers = (int(n) for m in MARKER.finditer(sentence) for n in re.findall(r"\d+", m.group(2)))
    return list(dict.fromkeys(n for n in numbers if 1 <= n <= sources))


def support_rates(answers: Sequence[Sequence[CheckedSentence]]) -> dict[str, float | None]:
    """The share of sentences supported and the share of answers with an unsupported one
    (None when there is nothing to count)."""
    checked = [s for a in answers for s in a]
    with_sentences = [a for a in answers if a]
    return {
        "supported_sentences": (
            sum(s.supported for s in checked) / len(checked) if checked else None
        ),
        "answers_with_unsupported": (
            sum(any(not s.supported for s in a) for a in with_sentences) / len(with_sentences)
            if with_sentences
            else None
        ),
    }

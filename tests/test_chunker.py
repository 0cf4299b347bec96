from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.chunker import ALIGN_SLACK_TOKENS, MAX_CHARS_PER_TOKEN, Span, Window, split_text
from rag.embed.embedder import Embedder

_PIECES = st.sampled_from(
    [
        "alpha",
        "beta",
        "Zürich",
        "naïve",
        "日本語",
        "emoji🙂",
        "tokenization",
        "x" * 130,  # longer than a word piece may be: one [UNK]
        "3.14159",
        "don't",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        ".",
        ",",
        "!",
        "<|endoftext|>",
        "[SEP]",
    ]
)
_TEXTS = st.lists(_PIECES, max_size=700).map("".join) | st.text(max_size=600)


def _check(text: str, spans: list[Span], embedder: Embedder, window: Window) -> None:
    tokens = embedder.token_offsets(text)
    if not tokens:
        assert spans == []
        return
    # Every window fits the model's input, counted by the model's own tokenizer.
    for span in spans:
        assert embedder.count_tokens(text[span.char_start : span.char_end]) <= window.max_input
        assert span.char_start < span.char_end
    # Together they cover the text from its first token to its last; what lies between two
    # windows (without an overlap) is whitespace the tokenizer drops anyway.
    assert spans[0].char_start == tokens[0][0]
    assert spans[-1].char_end == tokens[-1][1]
    for a, b in itertools.pairwise(spans):
        assert b.char_start <= a.char_end or not embedder.token_offsets(
            text[a.char_end : b.char_start]
        )
        assert b.char_end > a.char_end
    # Consecutive windows share the configured overlap (a little more to start on a word).
    # They share less only after a window shorter than the overlap, or where a run of
    # letters the tokenizer makes one [UNK] caps a window by characters.
    max_chars = window.budget * MAX_CHARS_PER_TOKEN
    for a, b in itertools.pairwise(spans):
        if a.first_token == b.first_token:
            continue  # character pieces of one giant token
        shared = a.end_token - b.first_token
        assert 0 <= shared <= window.overlap + ALIGN_SLACK_TOKENS
        back = max(a.first_token, a.end_token - window.overlap)
        capped = a.end_token >= len(tokens) or tokens[a.end_token][1] - tokens[back][0] > max_chars
        if a.end_token - a.first_token > window.overlap and not capped:
            assert shared >= window.overlap


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=_TEXTS, chunk_tokens=st.integers(16, 400), overlap=st.integers(0, 60))
def test_windows_cover_the_text_fit_the_model_and_overlap(
    embedder: Embedder, text: str, chunk_tokens: int, overlap: int
) -> None:
    window = Window.fit(embedder, chunk_tokens, min(overlap, chunk_tokens - 1))
    assert window.budget <= embedder.max_input_tokens - 2
    _check(text, split_text(text, embedder, window), embedder, window)


def test_windows_end_at_paragraph_boundaries_when_one_is_in_reach(embedder: Embedder) -> None:
    paragraphs = [f"Part {n}: " + " ".join(["harbor crane"] * 40) + "." for n in range(5)]
    text = "\n\n".join(paragraphs)  # ~85 tokens a paragraph
    window = Window.fit(embedder, 180, 30)
    spans = split_text(text, embedder, window)
    ends = {text.index(p) + len(p) for p in paragraphs}
    assert len(spans) > 2
    assert all(span.char_end in ends for span in spans)
    _check(text, spans, embedder, window)


def test_a_huge_word_is_cut_by_characters_and_still_covered(embedder: Embedder) -> None:
    text = "start " + "q" * 10_000 + " end"
    window = Window.fit(embedder, 180, 30)
    spans = split_text(text, embedder, window)
    assert max(s.char_end - s.char_start for s in spans) <= 180 * 12
    _check(text, spans, embedder, window)


def test_chunk_size_is_capped_at_the_model_input_limit(embedder: Embedder) -> None:
    window = Window.fit(embedder, 1000, 30)
    assert window.budget == embedder.max_input_tokens - 2
    text = " ".join(f"word{i}" for i in range(3000))
    spans = split_text(text, embedder, window)
    assert max(embedder.count_tokens(text[s.char_start : s.char_end]) for s in spans) == 256
    _check(text, spans, embedder, window)


def test_special_token_strings_in_documents_are_plain_text(embedder: Embedder) -> None:
    spans = split_text("before <|endoftext|> [SEP] after", embedder, Window.fit(embedder, 16, 4))
    assert len(spans) == 1

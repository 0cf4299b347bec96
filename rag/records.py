"""The values that flow between ingest, store, retrieval and answers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Section:
    """A stretch of a document that chunks must not cross: a PDF page or a Markdown section."""

    text: str
    page: int | None = None  # 1-based PDF page
    heading: str = ""  # "Title > Subsection" path of the Markdown section
    char_start: int = 0  # offset of `text` in the whole document's text


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str
    doc_id: str
    source: str
    page: int | None
    heading: str
    text: str
    char_start: int
    char_end: int
    index: int


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk found by a search, with its similarity (cosine, higher is closer)."""

    chunk_id: str
    source: str
    page: int | None
    heading: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Citation:
    n: int
    source: str
    page: int | None
    heading: str
    chunk_id: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of streamed answer text."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float


@dataclass(frozen=True, slots=True)
class Answer:
    answer: str
    citations: list[Citation] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0, 0.0, 0.0))
    # Passages retrieved but left out because the context budget was full.
    dropped: list[str] = field(default_factory=list)
    # "stop" (the model ended its turn), "length" (the token limit) or "cancelled".
    finish_reason: str = "stop"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

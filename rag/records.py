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
    # Where the chunk sits in its document, so neighbours can be merged when packing.
    doc_id: str = ""
    chunk_index: int = -1
    char_start: int = -1
    char_end: int = -1
    # Every chunk this passage holds, in document order (more than one once merged).
    chunk_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Citation:
    n: int
    source: str
    page: int | None
    heading: str
    chunk_id: str
    text: str
    score: float
    # Whether the answer has an [n] marker for this source.
    cited: bool = False
    # The chunks merged into this source (just chunk_id when none were).
    chunk_ids: list[str] = field(default_factory=list)
    # The document it is from: GET /api/documents/{doc_id}/source is its original.
    doc_id: str = ""


@dataclass(frozen=True, slots=True)
class Span:
    """The passage text that supports an answer sentence: `text` is the cited passage's
    text[start:end] (Citation.text, so offsets index the passage as cited)."""

    source: str
    page: int | None
    chunk_id: str
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class CheckedSentence:
    """An answer sentence checked against its sources (rag.qa.support)."""

    text: str
    # False when a number, name or command of the sentence is in none of its sources, or
    # too few of its words are.
    supported: bool
    # The sources its [n] markers name; empty when it has none.
    citations: list[int] = field(default_factory=list)
    # Where its sources say it; None when unsupported or when it makes no claim.
    span: Span | None = None


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
    # The standalone query searched for a follow-up question; None when the question was
    # searched as asked.
    rewritten_query: str | None = None
    # Earlier conversation turns left out because the context budget was full.
    dropped_turns: int = 0
    # True when retrieval found nothing relevant and the LLM was not called.
    not_found: bool = False
    # Each answer sentence checked against the passages it cites (rag.qa.support); empty
    # when there were no passages (not found, or the plain LLM).
    sentences: list[CheckedSentence] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

"""Hybrid retrieval: vector and full-text search in one collection, fused by reciprocal rank.

Both legs filter on the collection with expression objects and take the query as data (the
full-text leg as a match query object, never as query syntax), so no request text can
change the filter or break the search. Every passage's score is its cosine similarity to
the query, whichever leg found it; the order is the fused one.

Fusion: weighted reciprocal-rank fusion, score(d) = sum over legs of w / (rrf_k + rank),
the vector leg weighing 1 and the text leg `retrieval.text_weight`, over
`retrieval.candidates` hits per leg. `python bench/retrieval.py --tune` ran the grid
candidates {10, 30, 60} x rrf_k {10, 30, 60, 100} x text_weight {0.5 .. 2} on the Debian
FAQ set (202 answerable) and the samples: hit@5 stayed within 97.5-99.5% and MRR within
0.879-0.900 on the FAQ, and the samples did not move beyond one question; weight 1 had
the best MRR for every (candidates, rrf_k). Differences of one or two questions are noise, so the
textbook defaults stay (30 candidates, rrf_k 60, weight 1: 98.5%, MRR 0.896).

"Not found" threshold (`retrieval.min_score`, 0.4): the best cosine similarity among the
top-k passages. `python bench/retrieval.py --calibrate` on both sets: answerable FAQ
questions had median 0.70 (lowest 0.33, short keyword queries), unanswerable ones at most
0.32; answerable sample questions at least 0.50, unanswerable ones median 0.16 but up to
0.51 ("How many weeks of paid parental leave...", on topic yet unanswered). At 0.4 every
FAQ and 7 of 8 sample unanswerable questions are refused without the LLM, and one
answerable FAQ question of 202 is wrongly refused (0.35 lets one more sample
unanswerable question through, 0.45 refuses one more answerable FAQ question). A
passage holding every content word of the query counts as relevant whatever its cosine,
which keeps keyword queries such as "kfreebsd" or "dlocate" (0.34-0.35). On-topic
questions the documents do not answer score like answerable ones; for those the grounded
prompt makes the model say so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag.config import RetrievalSettings
from rag.conversation import content_words
from rag.embedder import Embedder
from rag.errors import UsageError
from rag.records import Passage
from rag.store import Store

if TYPE_CHECKING:
    import numpy as np

_WORD = re.compile(r"\w+")


@dataclass
class Retriever:
    store: Store
    embedder: Embedder
    settings: RetrievalSettings = field(default_factory=RetrievalSettings)

    def search(self, query: str, collection: str, k: int, mode: str | None = None) -> list[Passage]:
        """The k best passages of `collection` for `query`, best first."""
        if not query.strip():
            raise UsageError("the question is empty")
        return self.search_by(query, self.embedder.embed_query(query), collection, k, mode)

    def search_by(
        self, query: str, vector: np.ndarray, collection: str, k: int, mode: str | None = None
    ) -> list[Passage]:
        """`search` with the query's embedding already computed."""
        mode = mode or self.settings.mode
        wanted = max(k, self.settings.candidates)
        by_vector = self.store.search(collection, vector, wanted)
        if mode == "vector":
            return by_vector[:k]
        by_text = self.store.text_search(collection, query, wanted, vector)
        fused = fuse([by_vector, by_text], [1.0, self.settings.text_weight], self.settings.rrf_k)
        return fused[:k]


def fuse(
    rankings: Sequence[Sequence[Passage]], weights: Sequence[float], rrf_k: float
) -> list[Passage]:
    """Weighted reciprocal-rank fusion of ranked passage lists; ties keep the first list's order."""
    scores: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, passage in enumerate(ranking, start=1):
            scores[passage.chunk_id] = scores.get(passage.chunk_id, 0.0) + weight / (rrf_k + rank)
            first.setdefault(passage.chunk_id, passage)
    order = sorted(first, key=lambda chunk_id: -scores[chunk_id])
    return [first[chunk_id] for chunk_id in order]


def is_relevant(passages: Sequence[Passage], min_score: float, query: str = "") -> bool:
    """Whether the passages are worth answering from: one is at least `min_score` similar
    to the query, or one holds every content word of the query (short keyword queries such
    as a command name embed poorly but match exactly)."""
    if any(p.score >= min_score for p in passages):
        return True
    wanted = {_stem(part) for word in content_words(query) for part in _WORD.findall(word)}
    return bool(wanted) and any(
        wanted <= {_stem(w) for w in _WORD.findall(p.text.lower())} for p in passages
    )


def _stem(word: str) -> str:
    """Crude suffix stripping, so that "promotes" matches "promote" and "databases"
    "database" in the word rule above (the full-text index stems on its own)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    return word.removesuffix("e")

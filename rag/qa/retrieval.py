"""Hybrid retrieval: vector and full-text search in one collection, fused by their scores.

Both legs filter on the collection with expression objects and take the query as data (the
full-text leg as a match query object, never as query syntax), so no request text can
change the filter or break the search. Every passage's score is its cosine similarity to
the query, whichever leg found it; the order is the fused one.

Fusion (`fuse_scores`): each of the `retrieval.candidates` hits per leg scores
(1 - s) x its cosine, min-max scaled over the candidates, + s x its BM25 score divided by
the best one (0 where the keyword leg missed it); s is `retrieval.text_weight` (0.3) for
questions and `retrieval.keyword_text_weight` (0.6) for search-box queries. Reciprocal-rank
fusion with equal weights, used before, ranks by position only, so keyword noise found by
both legs outranked a passage far closer in meaning (on a user's FAQ with one answer per
file it lost to vector search alone). Then `diversify`: neighbouring chunks of one section
are merged into one passage (as packing shows them) and at most
`retrieval.max_per_document` passages of one document stay in the top k, the others
moving behind; every mode is shaped so, which alone lifts vector search's FAQ hit@1 from
78.2% to 81.7%.

Chosen with `python bench/retrieval.py --tune` (both legs fetched once per question,
re-fused in Python) on the Debian FAQ (202 answerable), the GNU Coding Standards PDF (50
questions paraphrased away from the manual's words, each answered on one page) and the
samples; FOLDOC (300) was held out. hit@1 / MRR@10 of this fusion against reciprocal rank,
vector only and BM25 only, all shaped alike: FAQ 87.6% / 0.927 against 85.1 / 0.909,
81.7 / 0.877 and 75.2 / 0.846; GNU 72.0% / 0.807 against 68.0 / 0.756, 56.0 / 0.690 and
44.0 / 0.532; the samples stay at 100%. On the held-out FOLDOC the gain carries over:
87.0% / 0.918 against 83.3 / 0.898 (reciprocal rank, which lost to BM25 alone there),
73.0 / 0.795 and 85.0 / 0.905; its hit@5 is 98.0%, as BM25's, one question under
reciprocal rank's 98.3%. Shares 0.25-0.35 are within a question or two of each other; 0.4
and up lose paraphrases (GNU hit@5 94 -> 90%), 0.2 and down lose FAQ hits at 1. Keyword
queries (33 in the FAQ) peak at 0.4-0.8. 50 candidates beat 30 by a question or two; a
cap of 2 per document cost vector search 3 FAQ hits at 5, a cap of 3 one at most.

"Not found" (`is_relevant`): a passage of the top k counts when its `evidence`, cosine +
`retrieval.word_weight` x the share of the question's content words it holds, reaches
`retrieval.min_score`, or when it holds every one of them (keyword queries such as
"dlocate" embed poorly but match exactly). `python bench/retrieval.py --calibrate` scans
both: at 0.55 and 0.4 every unanswerable FAQ question and 7 of 8 sample ones are refused
and no answerable one of either (the cosine alone at 0.4 let one FAQ question through);
on the held-out FOLDOC 9 of 10 unanswerable and 10 of 300 answerable (3.3%) are refused.
`rag eval` reports that operating point, refused unanswerable against refused answerable
(and with --generate the whole pipeline's, where the model may still say the answer is not
in its sources); the aim is >= 85% against <= 5%. The FAQ and the held-out FOLDOC meet it
(the samples refuse 7 of 8). The GNU manual does not: its unanswerable questions are on
the manual's topics, score like the paraphrased answerable ones (evidence 0.59-0.87
against 0.39-0.95) and share as many words, so 1 of 10 is refused, and 8 of 50 answerable
ones are refused too. `python bench/refusal.py` measures what else might tell them apart;
per signal, its AUC and the share of answerable questions refused when 85% of the
unanswerable are (FAQ / samples / FOLDOC held out / GNU):

    evidence (this rule)        1.000 0.0%  0.994 0.0%  0.963  1.7%  0.458 90%
    best sentence's cosine      1.000 0.0%  0.994 0.0%  0.966  1.3%  0.538 82%
    BM25 score                  0.918 13%   0.988 0.0%  0.863 21%    0.608 84%
    cosine gap, best to 6th     0.972 11%   0.988 0.0%  0.828 47%    0.674 48%
    logistic fit on all nine    0.999 0.0%  0.994 0.0%  0.949  3.3%  0.568 66%

(the answer-bearing sentence is the top passages' sentence closest to the question; the
nine add the best sentence's word share, both legs agreeing on the top passage, and the
best cosine's z-score, each at most 0.738 AUC on GNU; the fit was on FAQ, samples and
GNU). Reading the passages with the answer model (Qwen2.5-Coder-1.5B) does no better at
that: its yes/no judgement of each of the top 3 (`--llm 50`) scores 0.758 AUC on GNU, of
the answer's whole prompt 0.65. So the rule stays as it is: nothing offline here tells a
question on a manual's topic that it does not answer from one it answers in other words.
What the model does tell apart is a paraphrased question from an off-topic one, so where
the rule refuses with evidence of at least `retrieval.model_check_min_score` the model
decides (rag.qa.modelcheck): that halves the answerable questions refused on GNU and cuts
FOLDOC's from 10 to 3 of 300, and lets no unanswerable one through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag.config import RetrievalSettings
from rag.embed.embedder import Embedder
from rag.errors import UsageError
from rag.index.store import Store
from rag.qa.conversation import content_words
from rag.qa.packing import merge_adjacent
from rag.records import Passage

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
        """`search` with the query's embedding already computed. Modes: "hybrid" (both
        legs fused), "vector", "keyword" (BM25 only); each shaped by `diversify`."""
        mode = mode or self.settings.mode
        wanted = max(k, self.settings.candidates)
        by_vector = [] if mode == "keyword" else self.store.search(collection, vector, wanted)
        if mode == "vector":
            ranked = by_vector
        else:
            by_text = self.store.keyword_search(collection, query, wanted, vector)
            if mode == "keyword":
                ranked = [p for p, _ in by_text]
            else:
                ranked = fuse_scores(by_vector, by_text, text_share(query, self.settings))
        return diversify(ranked, k, self.settings.max_per_document)


# Openings of a question in natural language; a query without one (and without "?") is
# typed like a search box and leans on the keyword leg.
_QUESTION = re.compile(
    r"^(what|how|why|when|where|which|who|whom|whose|is|are|was|were|am|can|could|should|"
    r"would|will|do|does|did|may|might|must|shall|has|have|i|i'm|my|please|tell|explain)\b",
    re.IGNORECASE,
)


def is_keyword_query(query: str) -> bool:
    """Whether `query` reads like search-box keywords rather than a question."""
    query = query.strip()
    return not (query.endswith("?") or _QUESTION.match(query))


def text_share(query: str, settings: RetrievalSettings) -> float:
    """The keyword leg's share of the fused score for this query (the vector leg has the
    rest): `keyword_text_weight` for keyword-like queries, `text_weight` for questions."""
    return settings.keyword_text_weight if is_keyword_query(query) else settings.text_weight


def fuse_scores(
    by_vector: Sequence[Passage], by_text: Sequence[tuple[Passage, float]], share: float
) -> list[Passage]:
    """Score-aware fusion: each candidate's cosine (min-max scaled over the candidates) and
    its BM25 score (divided by the best one; 0 where the keyword leg missed it), weighed
    (1 - share) and share. Every candidate has a cosine, whichever leg found it,
    so a keyword hit that is far from the question in meaning cannot outrank a close one
    on rank alone, as it can with reciprocal-rank fusion. Ties keep the vector leg's order.
    """
    cosine: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for p in by_vector:
        cosine[p.chunk_id] = p.score
        first.setdefault(p.chunk_id, p)
    bm25: dict[str, float] = {}
    for p, score in by_text:
        cosine[p.chunk_id] = p.score
        bm25[p.chunk_id] = max(score, 0.0)
        first.setdefault(p.chunk_id, p)
    if not first:
        return []
    low, high = min(cosine.values()), max(cosine.values())
    spread = high - low
    best_bm25 = max(bm25.values(), default=0.0)

    def fused(chunk_id: str) -> float:
        near = (cosine[chunk_id] - low) / spread if spread > 0 else 1.0
        words = bm25.get(chunk_id, 0.0) / best_bm25 if best_bm25 > 0 else 0.0
        return (1.0 - share) * near + share * words

    order = sorted(first, key=lambda chunk_id: -fused(chunk_id))
    return [first[chunk_id] for chunk_id in order]


def fuse(
    rankings: Sequence[Sequence[Passage]], weights: Sequence[float], rrf_k: float
) -> list[Passage]:
    """Weighted reciprocal-rank fusion of ranked passage lists; ties keep the first list's
    order. Kept to compare against in bench/retrieval.py."""
    scores: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, passage in enumerate(ranking, start=1):
            scores[passage.chunk_id] = scores.get(passage.chunk_id, 0.0) + weight / (rrf_k + rank)
            first.setdefault(passage.chunk_id, passage)
    order = sorted(first, key=lambda chunk_id: -scores[chunk_id])
    return [first[chunk_id] for chunk_id in order]


# Chunks one result passage holds at most when neighbours are merged into it.
MAX_MERGED_CHUNKS = 3


def diversify(ranked: Sequence[Passage], k: int, max_per_document: int) -> list[Passage]:
    """The k best passages with neighbouring chunks of one section merged into the better
    one's place (as the prompt would show them) and at most `max_per_document` passages of
    one document; passages over that cap move behind the others rather than go, so a
    collection of one document still fills k. 0 = no cap. Looks at most 2k passages deep
    for others, so that merging draws only on passages near the top."""
    shown: list[list[Passage]] = []
    deferred: list[list[Passage]] = []
    per_document: dict[str, int] = {}
    for passage in ranked:
        if len(shown) >= k or len(shown) + len(deferred) >= 2 * k:
            break
        home = next((g for g in shown + deferred if _neighbours(g, passage)), None)
        if home is not None:
            home.append(passage)
            continue
        doc = passage.doc_id or passage.source
        if max_per_document and per_document.get(doc, 0) >= max_per_document:
            deferred.append([passage])
            continue
        per_document[doc] = per_document.get(doc, 0) + 1
        shown.append([passage])
    shown += deferred[: max(0, k - len(shown))]
    return [merge_adjacent(g)[0] if len(g) > 1 else g[0] for g in shown]


def _neighbours(group: list[Passage], passage: Passage) -> bool:
    """Whether `passage` continues the run of chunks in `group` (same document, page and
    heading, next to one of them) and the run has room for it."""
    head = group[0]
    return (
        len(group) < MAX_MERGED_CHUNKS
        and bool(passage.doc_id)
        and passage.chunk_index >= 0
        and (head.doc_id, head.page, head.heading)
        == (passage.doc_id, passage.page, passage.heading)
        and any(abs(p.chunk_index - passage.chunk_index) == 1 for p in group)
    )


def evidence(passage: Passage, query: str, word_weight: float) -> float:
    """How strongly `passage` supports answering `query`: its cosine similarity plus
    `word_weight` times its `word_coverage`. Both legs' signals in one number: meaning alone
    lets an on-topic passage that says nothing of the question's subject through; words
    alone let a passage that merely mentions them through."""
    return passage.score + word_weight * word_coverage(passage, query)


def word_coverage(passage: Passage, query: str) -> float:
    """The share of the query's content words (crudely stemmed) the passage holds."""
    return text_coverage(passage.text, query)


def text_coverage(text: str, query: str) -> float:
    """The share of the query's content words (crudely stemmed) `text` holds."""
    wanted = query_terms(query)
    return len(wanted & _terms(text)) / len(wanted) if wanted else 0.0


def is_relevant(
    passages: Sequence[Passage], min_score: float, query: str = "", word_weight: float = 0.0
) -> bool:
    """Whether the passages are worth answering from: one has `evidence` of at least
    `min_score`, or holds every content word of the query (short keyword queries such as a
    command name embed poorly but match exactly)."""
    return any(
        evidence(p, query, word_weight) >= min_score or word_coverage(p, query) == 1.0
        for p in passages
    )


def query_terms(query: str) -> set[str]:
    """The query's content words, stemmed."""
    return {_stem(part) for word in content_words(query) for part in _WORD.findall(word)}


def _terms(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower())}


def _stem(word: str) -> str:
    """Crude suffix stripping, so that "promotes" matches "promote" and "databases"
    "database" in the word rule above (the full-text index stems on its own)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    return word.removesuffix("e")

"""Hybrid retrieval on a real index: fusion, the collection filter, hostile query text."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.pipeline import run_ingest
from rag.config import ChunkingSettings, RetrievalSettings
from rag.embedder import Embedder
from rag.records import Passage
from rag.retrieval import Retriever, fuse, is_relevant
from rag.store import Store

DOCS = {
    "cache.md": "# Cache\n\nTo clear the build cache run kx7734-reset on the build host. "
    "It removes every cached artifact and takes about a minute.\n",
    "badges.md": "# Badges\n\nA lost security badge must be reported to the security desk "
    "within 24 hours. The badge is then blocked and a new one is issued.\n",
    "travel.md": "# Travel\n\nTrain travel is preferred over flying for trips under six "
    "hours. Hotels are booked through the travel desk.\n",
}
SECRET = "# Salaries\n\nThe secret salary table lists every employee's pay in euros.\n"

NASTY_QUERIES = [
    '"unbalanced quote',
    '"harbor db"',
    "it's 'single' quotes",
    'badge AND NOT "x" OR (y',
    "text:badge^3 ~2 *",
    "' OR 1=1 --",
    "collection = 'beta'",
    "collection:beta salary",
    '") OR collection = "beta" OR ("',
    '+-&&||!(){}[]^"~*?:\\/',
    "NOT",
    "\x00badge",
    "日本語のクエリ",
    "badge " * 500,
]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Store:
    """Three documents in collection alpha, a secret one in collection beta."""
    from rag.store import open_store

    root = tmp_path_factory.mktemp("retrieval")
    (root / "alpha").mkdir()
    (root / "beta").mkdir()
    for name, text in DOCS.items():
        (root / "alpha" / name).write_text(text)
    (root / "beta" / "salaries.md").write_text(SECRET)
    store = open_store(root / "data", embedder.name, embedder.dim)
    for collection in ("alpha", "beta"):
        run_ingest(
            [root / collection],
            collection=collection,
            chunking=ChunkingSettings(),
            embedder=embedder,
            store=store,
        )
    return store


def test_hybrid_ranks_the_exact_identifier_first(index: Store, embedder: Embedder) -> None:
    hits = Retriever(index, embedder).search("kx7734-reset", "alpha", 3)
    assert Path(hits[0].source).name == "cache.md"
    # Whichever leg found it, the score is the cosine similarity to the query.
    assert -1.0 <= hits[0].score <= 1.0
    assert hits[0].doc_id and hits[0].chunk_index == 0 and hits[0].chunk_ids == (hits[0].chunk_id,)


def test_vector_mode_is_vector_search_only(index: Store, embedder: Embedder) -> None:
    query = "how soon to report a lost badge"
    vector_only = Retriever(index, embedder, RetrievalSettings(mode="vector")).search(
        query, "alpha", 3
    )
    assert vector_only == index.search("alpha", embedder.embed_query(query), 3)


@pytest.mark.parametrize("query", NASTY_QUERIES)
def test_quotes_and_operators_neither_crash_nor_cross_collections(
    index: Store, embedder: Embedder, query: str
) -> None:
    retriever = Retriever(index, embedder)
    hits = retriever.search(query, "alpha", 5)
    assert all(Path(h.source).parent.name == "alpha" for h in hits)
    text_hits = index.text_search("alpha", query, 5)
    assert all("salary" not in h.text for h in text_hits)


def test_the_other_collection_is_found_only_when_asked_for(
    index: Store, embedder: Embedder
) -> None:
    retriever = Retriever(index, embedder)
    assert all("salary" not in h.text for h in retriever.search("secret salary table", "alpha", 5))
    assert "salary" in retriever.search("secret salary table", "beta", 1)[0].text
    assert retriever.search("anything", "no-such-collection", 5) == []


def _p(chunk_id: str, score: float = 0.5) -> Passage:
    return Passage(chunk_id, "s.md", None, "", chunk_id, score)


def test_fusion_rewards_passages_both_legs_found() -> None:
    vector = [_p("a"), _p("b"), _p("c")]
    text = [_p("c"), _p("d")]
    assert [p.chunk_id for p in fuse([vector, text], [1.0, 1.0], 60)] == ["c", "a", "b", "d"]
    # With no weight on the text leg, the vector order stands.
    assert [p.chunk_id for p in fuse([vector, text], [1.0, 0.0], 60)][:3] == ["a", "b", "c"]


def test_relevance_needs_similarity_or_every_query_word() -> None:
    passages = [Passage("a", "s.md", None, "", "Run dlocate -S foo to search.", 0.2)]
    assert not is_relevant(passages, 0.4, "What is the capital of Australia?")
    assert is_relevant(passages, 0.4, "dlocate")
    assert is_relevant(passages, 0.1, "anything")
    assert not is_relevant([], 0.0, "dlocate")

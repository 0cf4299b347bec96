"""Hybrid retrieval on a real index: fusion, the collection filter, hostile query text."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.run import run_ingest
from rag.config import ChunkingSettings, RetrievalSettings
from rag.embed.embedder import Embedder
from rag.index.store import Store
from rag.qa.retrieval import (
    Retriever,
    diversify,
    fuse,
    fuse_scores,
    is_keyword_query,
    is_relevant,
    text_share,
)
from rag.records import Passage

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
    from rag.index.store import open_store

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


def _p(
    chunk_id: str, score: float = 0.5, doc: str = "", index: int = -1, text: str = ""
) -> Passage:
    return Passage(
        chunk_id,
        f"{doc or 's'}.md",
        None,
        "",
        text or chunk_id,
        score,
        doc_id=doc,
        chunk_index=index,
        char_start=-1,
        char_end=-1,
        chunk_ids=(chunk_id,),
    )


def test_reciprocal_rank_fusion_rewards_passages_both_legs_found() -> None:
    vector = [_p("a"), _p("b"), _p("c")]
    text = [_p("c"), _p("d")]
    assert [p.chunk_id for p in fuse([vector, text], [1.0, 1.0], 60)] == ["c", "a", "b", "d"]
    # With no weight on the text leg, the vector order stands.
    assert [p.chunk_id for p in fuse([vector, text], [1.0, 0.0], 60)][:3] == ["a", "b", "c"]


DEFAULTS = RetrievalSettings()

# (why, query, vector leg [(id, cosine)], keyword leg [(id, cosine, bm25)], expected first)
FUSION_CASES = [
    (
        "keyword noise found by both legs must not outrank a strong vector hit",
        "How do I keep a service from starting when the machine boots?",
        [("right", 0.80), ("noise1", 0.52), ("noise2", 0.50)],
        [("noise1", 0.52, 9.0), ("noise2", 0.50, 8.5), ("noise3", 0.31, 8.0)],
        "right",
    ),
    (
        "an exact match of a keyword query wins over passages near in meaning",
        "kx7734-reset",
        [("near1", 0.46), ("near2", 0.45), ("exact", 0.40)],
        [("exact", 0.40, 12.0)],
        "exact",
    ),
    (
        "an exact identifier inside a question wins when the meanings are close",
        "What does dlocate do?",
        [("near", 0.52), ("exact", 0.50)],
        [("exact", 0.50, 7.0), ("other", 0.20, 1.0)],
        "exact",
    ),
    (
        "both legs agreeing on one passage put it first",
        "Which init system does a default install use?",
        [("a", 0.70), ("both", 0.69), ("c", 0.60)],
        [("both", 0.69, 6.0), ("d", 0.30, 5.5)],
        "both",
    ),
    (
        "with no keyword hit the vector order stands",
        "Where does the name come from?",
        [("a", 0.70), ("b", 0.60)],
        [],
        "a",
    ),
]


@pytest.mark.parametrize(
    ("why", "query", "vector", "keyword", "first"),
    FUSION_CASES,
    ids=[case[0] for case in FUSION_CASES],
)
def test_score_aware_fusion(
    why: str,
    query: str,
    vector: list[tuple[str, float]],
    keyword: list[tuple[str, float, float]],
    first: str,
) -> None:
    by_vector = [_p(i, cos) for i, cos in vector]
    by_text = [(_p(i, cos), bm25) for i, cos, bm25 in keyword]
    fused = fuse_scores(by_vector, by_text, text_share(query, DEFAULTS))
    assert fused[0].chunk_id == first, why
    # Nothing is lost and nothing listed twice; scores stay the cosine similarities.
    assert sorted(p.chunk_id for p in fused) == sorted({i for i, *_ in vector + keyword})
    assert all(
        p.score == dict([(i, c) for i, c, *_ in vector + keyword])[p.chunk_id] for p in fused
    )


def test_keyword_queries_lean_on_the_keyword_leg() -> None:
    assert is_keyword_query("kx7734-reset") and is_keyword_query("apt pinning priority")
    assert not is_keyword_query("How do I pin a package?")
    assert not is_keyword_query("pin a package version?")
    assert text_share("dlocate", DEFAULTS) > text_share("What is dlocate?", DEFAULTS)


def test_neighbouring_chunks_merge_and_one_document_is_capped() -> None:
    ranked = [
        _p("a3", 0.9, "a", 3, "three"),
        _p("a4", 0.8, "a", 4, "four"),  # next to a3: merged into its place
        _p("a9", 0.7, "a", 9),
        _p("a20", 0.6, "a", 20),  # a's third passage: over the cap of 2, moves back
        _p("b1", 0.5, "b", 1),
        _p("c1", 0.4, "c", 1),
    ]
    top = diversify(ranked, 4, max_per_document=2)
    assert [p.chunk_ids for p in top] == [("a3", "a4"), ("a9",), ("b1",), ("c1",)]
    assert top[0].text == "three\nfour" and top[0].score == 0.9
    # With room to spare the capped passage comes back, behind the others.
    assert [p.chunk_id for p in diversify(ranked, 5, 2)][-1] == "a20"
    # A collection of one document still fills k.
    one = [_p(f"a{n}", 1 - n / 10, "a", 2 * n) for n in range(5)]
    assert [p.chunk_id for p in diversify(one, 4, 2)] == ["a0", "a1", "a2", "a3"]
    assert [p.chunk_id for p in diversify(ranked, 3, 0)] == ["a3", "a9", "a20"]


# (why, query, passages [(cosine, text)], relevant)
REFUSAL_CASES = [
    (
        "off-topic question, weak similarity",
        "What is the capital of Australia?",
        [(0.15, "Run dlocate -S foo to search the package index.")],
        False,
    ),
    (
        "a close passage is answered from",
        "How do I search which package holds a file?",
        [(0.62, "Run dlocate -S foo to search the package index.")],
        True,
    ),
    (
        "a keyword query held word for word is answered from at any similarity",
        "dlocate",
        [(0.20, "Run dlocate -S foo to search the package index.")],
        True,
    ),
    (
        "on-topic but the passage shares none of the question's subject",
        "How many maintainers must approve a patch?",
        [(0.42, "Keep the length of source lines to 79 characters or less.")],
        False,
    ),
    (
        "middling similarity backed by the question's words is answered from",
        "Which files hold the package index search?",
        [(0.38, "Run dlocate -S foo to search the package index files.")],
        True,
    ),
    (
        "an on-topic passage as close as an answer, without the question's words, is refused",
        "How many weeks of paid parental leave do employees get?",
        [(0.50, "Vacation days are requested through the HR portal a month ahead.")],
        False,
    ),
    ("nothing retrieved", "dlocate", [], False),
]


@pytest.mark.parametrize(
    ("why", "query", "passages", "relevant"),
    REFUSAL_CASES,
    ids=[case[0] for case in REFUSAL_CASES],
)
def test_refusal_weighs_similarity_and_the_question_words(
    why: str, query: str, passages: list[tuple[float, str]], relevant: bool
) -> None:
    found = [_p(f"p{n}", cos, text=text) for n, (cos, text) in enumerate(passages)]
    assert is_relevant(found, DEFAULTS.min_score, query, DEFAULTS.word_weight) is relevant, why

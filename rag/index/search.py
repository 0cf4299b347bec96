"""The two searches of the chunk table: nearest vectors (cosine) and full-text (BM25).

Both filter on the collection with expression objects and take the query as data, so no
request text can change the filter or break the search (rag.qa.retrieval fuses them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rag.errors import StoreError
from rag.index.schema import PASSAGE_COLUMNS, to_passage
from rag.records import Passage

if TYPE_CHECKING:
    import numpy as np

# HNSW candidates per query (LanceDB's default is 1.5 x limit). At 100k chunks 256 raised
# recall@10 against exact search from 0.82 to 0.95 at the same ~8 ms (bench/retrieval.py);
# without a vector index it has no effect.
HNSW_EF = 256


def vector_search(table: Any, collection: str, vector: np.ndarray, k: int) -> list[Passage]:
    """The k chunks nearest to `vector` by cosine similarity (the passage's score)."""
    from lancedb.expr import col, lit

    rows = (
        table.search(vector.tolist(), vector_column_name="vector")
        # Without an explicit metric LanceDB uses l2 until a cosine index exists.
        .distance_type("cosine")
        .ef(HNSW_EF)
        .where(col("collection") == lit(collection), prefilter=True)
        .select([*PASSAGE_COLUMNS, "_distance"])
        .limit(k)
        .to_list()
    )
    return [to_passage(r, 1.0 - float(r["_distance"])) for r in rows]


def bm25_search(
    table: Any, collection: str, query: str, k: int, vector: np.ndarray | None = None
) -> list[tuple[Passage, float]]:
    """The k chunks that best match `query` by full-text search (BM25), best first, each
    with its BM25 score; the passage's score is its cosine similarity to `vector` when
    given, else the BM25 score.

    The query is a match query object, never parsed as query syntax, so quotes, operators
    and field names in user text are plain words; the collection filter is an expression
    object."""
    from lancedb.expr import col, lit
    from lancedb.query import MatchQuery

    if not query.strip():
        return []
    columns = [*PASSAGE_COLUMNS, "_score", *(["vector"] if vector is not None else [])]
    try:
        rows = (
            table.search(MatchQuery(query, "text"), query_type="fts")  # type: ignore[call-arg]  # the other fields have defaults
            .where(col("collection") == lit(collection), prefilter=True)
            .select(columns)
            .limit(k)
            .to_list()
        )
    except (OSError, RuntimeError, ValueError) as e:
        raise StoreError(f"full-text search failed: {e}") from e
    if vector is None or not rows:
        return [(to_passage(r, float(r["_score"])), float(r["_score"])) for r in rows]
    import numpy as np

    sims = np.asarray([r["vector"] for r in rows], dtype=np.float32) @ vector.astype(np.float32)
    return [
        (to_passage(r, float(sim)), float(r["_score"])) for r, sim in zip(rows, sims, strict=True)
    ]

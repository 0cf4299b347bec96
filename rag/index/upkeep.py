"""Keeping a chunk table fast and small: its indexes, its fragments, its old versions.

Each function works on one LanceDB table that the caller (rag.index.store) has opened under
the writer lock; `check` is the lock's `Hold.check`, called before each commit so that a
writer that lost its lease (an index in a bucket) never commits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from rag.errors import StoreError
from rag.index.schema import to_arrow

FTS_INDEX = "text_idx"
VECTOR_INDEX = "vector_idx"


def refresh_indexes(
    table: Any,
    wrote: bool,
    keep_versions_s: float,
    vector_index_rows: int,
    check: Callable[[], None],
) -> bool:
    """After a run that wrote: build the FTS index if missing, else fold new rows into it,
    compact and prune versions older than `keep_versions_s`. A run that wrote nothing changes
    nothing unless a crash left the index missing or behind. Returns whether it wrote."""
    from lancedb.index import FTS

    if table.count_rows() == 0:
        return False
    indexed = {i.name for i in table.list_indices()}
    behind = FTS_INDEX in indexed and table.index_stats(FTS_INDEX).num_unindexed_rows > 0
    if not wrote and FTS_INDEX in indexed and not behind:
        return False
    check()
    try:
        if FTS_INDEX not in indexed:
            table.create_index("text", config=FTS(), name=FTS_INDEX)
        ensure_vector_index(table, indexed, vector_index_rows)
        table.optimize(cleanup_older_than=timedelta(seconds=keep_versions_s))
    except (OSError, RuntimeError, ValueError) as e:
        raise StoreError(f"maintaining the index: {e}") from e
    return True


def ensure_vector_index(table: Any, indexed: set[str], vector_index_rows: int) -> None:
    """Build the HNSW index once the table is large enough (queries pass cosine too); a
    `vector_index_rows` of 0 never builds it."""
    from lancedb.index import HnswSq

    if not vector_index_rows or VECTOR_INDEX in indexed:
        return
    if table.count_rows() >= vector_index_rows:
        table.create_index("vector", config=HnswSq(distance_type="cosine"), name=VECTOR_INDEX)


def compact_table(
    table: Any,
    keep_versions_s: float,
    vector_index_rows: int,
    check: Callable[[], None],
    *,
    erase: bool = False,
) -> None:
    """Compact fragments, fold new rows into the indexes, prune older versions (`rag maintain`).

    Unlike refresh_indexes it always runs, on an empty table too: old versions of an emptied
    table still hold the deleted rows. `erase` (retention 0) also rebuilds the indexes from
    the live rows, since an index built before a delete keeps the deleted rows' tokens and
    quantized vectors (an emptied table keeps its whole index; it is dropped), and deletes
    files that no version references (a killed writer's, which hold text). That is safe only
    with no other writer at work, which the writer lock the caller holds guarantees. Rows
    deleted but left in place by compaction are not removed here; see rag.ops.maintenance.
    """
    from lancedb.index import FTS

    check()
    try:
        table.checkout_latest()
        indexed = {i.name for i in table.list_indices()}
        if table.count_rows() == 0:
            for name in indexed if erase else ():
                table.drop_index(name)
        else:
            if erase or FTS_INDEX not in indexed:
                table.create_index("text", config=FTS(), name=FTS_INDEX, replace=True)
            if erase and VECTOR_INDEX in indexed:
                table.drop_index(VECTOR_INDEX)  # rebuilt next if still large enough
                indexed.discard(VECTOR_INDEX)
            ensure_vector_index(table, indexed, vector_index_rows)
        with warnings.catch_warnings():
            # LanceDB warns that retention 0 breaks readers of older versions: the operator
            # chose it (documented with storage.keep_versions_s).
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0")
            table.optimize(
                cleanup_older_than=timedelta(seconds=keep_versions_s),
                delete_unverified=erase,
            )
    except (OSError, RuntimeError, ValueError) as e:
        raise StoreError(f"compacting the index: {e}") from e


def fill_table(
    table: Any, schema: Any, batches: Iterable[list[dict[str, Any]]], check: Callable[[], None]
) -> int:
    """Write `batches` of rows into a new table and index them; returns the rows written."""
    from lancedb.index import FTS

    rows = 0
    try:
        for batch in batches:
            if batch:
                check()
                table.add(to_arrow(batch, schema))
                rows += len(batch)
        if rows:
            table.create_index("text", config=FTS(), name=FTS_INDEX)
            table.optimize()
    except (OSError, RuntimeError, ValueError) as e:
        raise StoreError(f"building the new index table: {e}") from e
    return rows

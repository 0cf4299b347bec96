"""The index: one LanceDB table of chunks with their vectors, under the data dir or in a bucket.

All collections share the table; every read and write filters on the `collection` column
with expression objects, never with request text pasted into SQL. Each write (a batch of
whole documents, or a removal) is one commit, so a reader never sees half a document, and
every write happens under the index's writer lock (rag.index.writelock): the data dir's flock,
or with storage.uri = s3://… the bucket's writer lease (rag.index.lease), checked before each
commit. Any number of readers, on any machine, may open the same index.

The embedding model's name and dimension live in the table's schema metadata; opening the
index with another model is refused. `rag ingest --reembed` builds a new table beside the
active one and switches the `active-table` pointer file only when the new one is complete.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import StorageSettings
from rag.errors import StoreError
from rag.index.location import (
    IndexLocation,
    index_location,
)
from rag.index.schema import (
    PASSAGE_COLUMNS,
    DocumentWrite,
    check_schema,
    chunk_rows,
    chunk_schema,
    to_arrow,
    to_passage,
)
from rag.index.search import bm25_search, vector_search
from rag.index.tables import TABLE, Tables, connect
from rag.index.upkeep import compact_table, fill_table, refresh_indexes
from rag.index.writelock import Hold, write_lock
from rag.records import Passage

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


@dataclass(frozen=True, slots=True)
class StoredDocument:
    doc_id: str
    source: str
    doc_hash: str
    pipeline: str
    chunks: int
    path: str = ""  # absolute path of the file at ingest time
    pages: int = 0  # distinct PDF pages with chunks (0 for other formats)


class Store:
    # maintain() builds the approximate vector index (HNSW, cosine) once the table holds this
    # many chunks; 0 never. `rag ingest` sets it from retrieval.vector_index_rows. At 100k
    # chunks exact search took ~170 ms here and HNSW ~8-10 ms (recall@10 0.95 with HNSW_EF);
    # IVF-PQ without refinement reached recall 0.15 on the same data.
    vector_index_rows = 50_000

    def __init__(
        self,
        tables: Tables,
        embedding_model: str | None,
        dim: int,
        *,
        lock_wait_s: float = 600.0,
        keep_versions_s: float = 86400.0,
        read_consistency_s: float | None = None,
        lease_s: float = 30.0,
    ) -> None:
        self.tables = tables
        self.data_path = tables.data_path
        self.location = tables.location
        self.lease_s = lease_s
        self.embedding_model = embedding_model
        self.dim = dim
        self.lock_wait_s = lock_wait_s
        self.keep_versions_s = keep_versions_s
        self._read_consistency_s = read_consistency_s
        self._opened: Any | None = None
        self._opened_name = ""
        self._pointer_checked = 0.0

    # -- tables ---------------------------------------------------------------------------

    def _table(self, create: bool = False, check: bool = True) -> Any | None:
        self._follow_pointer()
        if self._opened is None:
            name = self.tables.active_name()
            self._opened = self.tables.open(name)
            if self._opened is None:
                if not create:
                    return None
                if self.embedding_model is None:
                    raise StoreError("cannot create the index without an embedding model")
                schema = chunk_schema(self.embedding_model, self.dim)
                self._opened = self.tables.create(name, schema, exist_ok=True)
            self._opened_name = name
        if check:
            self._check_model(self._opened.schema)
        return self._opened

    def _follow_pointer(self) -> None:
        """Reopen when --reembed switched tables under a long-lived reader (the web app)."""
        if self._opened is None or self._read_consistency_s is None:
            return
        now = time.monotonic()
        if now - self._pointer_checked < self._read_consistency_s:
            return
        self._pointer_checked = now
        if self.tables.active_name() != self._opened_name:
            self._opened = None

    def _check_model(self, schema: pa.Schema) -> None:
        check_schema(schema, self.embedding_model, self.dim)

    def table_version(self) -> int:
        """The active table's version (0 when there is none); every commit adds one."""
        table = self._table(check=False)
        if table is None:
            return 0
        table.checkout_latest()
        return int(table.version)

    def stored_model(self) -> tuple[str, int] | None:
        """(model, dim) the active table was built with, or None when there is no table."""
        table = self._table(check=False)
        if table is None:
            return None
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        return meta.get("embedding_model", "?"), int(meta.get("embedding_dim", "0"))

    # -- reading --------------------------------------------------------------------------

    def documents(self, collection: str) -> dict[str, StoredDocument]:
        """Every stored document of a collection, by doc_id."""
        from lancedb.expr import col, lit

        table = self._table()
        if table is None:
            return {}
        rows = (
            table.search()
            .where(col("collection") == lit(collection))
            .select(["doc_id", "source", "doc_hash", "pipeline", "path", "page"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        counts: dict[str, int] = {}
        pages: dict[str, set[int]] = {}
        first: dict[str, dict[str, Any]] = {}
        for row in rows:
            doc_id = row["doc_id"]
            first.setdefault(doc_id, row)
            counts[doc_id] = counts.get(doc_id, 0) + 1
            if row["page"] is not None:
                pages.setdefault(doc_id, set()).add(row["page"])
        return {
            doc_id: StoredDocument(
                doc_id,
                row["source"],
                row["doc_hash"],
                row["pipeline"],
                counts[doc_id],
                row["path"] or "",
                len(pages.get(doc_id, ())),
            )
            for doc_id, row in first.items()
        }

    def source_chunks(self, collection: str, source: str) -> list[Passage]:
        """The chunks of the documents named `source` in a collection, each document's in
        order (score 0); empty when there is none."""
        from lancedb.expr import col, lit

        table = self._table()
        if table is None:
            return []
        rows = (
            table.search()
            .where((col("collection") == lit(collection)) & (col("source") == lit(source)))
            .select(list(PASSAGE_COLUMNS))
            .limit(None)
            .to_list()
        )
        chunks = [to_passage(r, 0.0) for r in rows]
        return sorted(chunks, key=lambda p: (p.doc_id, p.chunk_index))

    def collections(self) -> list[str]:
        """Names of the collections that hold at least one chunk."""
        table = self._table()
        if table is None:
            return []
        column = table.search().select(["collection"]).limit(None).to_arrow()["collection"]
        return sorted(set(column.to_pylist()))

    def doc_hashes(self) -> set[str]:
        """The content hash of every stored document, all collections (rag.index.originals)."""
        table = self._table(check=False)
        if table is None:
            return set()
        # The latest version: a writer in another process may have committed since we opened.
        table.checkout_latest()
        column = table.search().select(["doc_hash"]).limit(None).to_arrow()["doc_hash"]
        return set(column.to_pylist())

    def search(self, collection: str, vector: np.ndarray, k: int) -> list[Passage]:
        """The k chunks nearest to `vector` by cosine similarity (the passage's score)."""
        table = self._table()
        return [] if table is None else vector_search(table, collection, vector, k)

    def text_search(
        self, collection: str, query: str, k: int, vector: np.ndarray | None = None
    ) -> list[Passage]:
        """The k chunks that best match `query` by full-text search (BM25), best first; with
        `vector` each passage's score is its cosine similarity to it, else its BM25 score."""
        return [p for p, _ in self.keyword_search(collection, query, k, vector)]

    def keyword_search(
        self, collection: str, query: str, k: int, vector: np.ndarray | None = None
    ) -> list[tuple[Passage, float]]:
        """`text_search` with each passage's BM25 score beside it (score-aware fusion
        weighs both)."""
        table = self._table()
        return [] if table is None else bm25_search(table, collection, query, k, vector)

    def row_count(self) -> int:
        """Chunks in the active table, all collections, whatever model built it."""
        table = self._table(check=False)
        return 0 if table is None else int(table.count_rows())

    def count_chunks(self, collection: str) -> int:
        return sum(d.chunks for d in self.documents(collection).values())

    def scan(
        self, columns: Sequence[str], batch_rows: int = 4096
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row of the active table in batches, whatever model built it (for rebuilds)."""
        table = self._table(check=False)
        if table is None:
            return
        present = [c for c in columns if c in table.schema.names]
        reader = table.search().select(present).limit(None).to_batches(batch_rows)
        for batch in reader:
            yield batch.to_pylist()

    # -- writing (each under the writer lock, one commit each) ----------------------------

    @contextlib.contextmanager
    def writer(self, on_wait: Callable[[str], None] | None = None) -> Iterator[Hold]:
        """Hold the index's writer lock; nested writes in this process don't wait again."""
        with write_lock(
            self.data_path,
            self.lock_wait_s,
            on_wait,
            location=self.location,
            lease_s=self.lease_s,
        ) as hold:
            yield hold

    def write_documents(self, collection: str, docs: Sequence[DocumentWrite]) -> None:
        """Replace the chunks of each document with its new ones, all in one commit."""
        from lancedb.expr import col, lit

        if not docs:
            return
        rows = [row for doc in docs for row in chunk_rows(collection, doc)]
        ids = [doc.doc_id for doc in docs]
        with self.writer() as hold:
            table = self._table(create=True)
            assert table is not None  # create=True makes it
            hold.check()
            try:
                (
                    table.merge_insert("chunk_id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(
                        col("doc_id").isin(ids) & (col("collection") == lit(collection))
                    )
                    .execute(to_arrow(rows, table.schema))
                )
            except (OSError, RuntimeError, ValueError) as e:
                names = ", ".join(c.source for d in docs[:3] for c in d.chunks[:1])
                raise StoreError(f"writing {names}: {e}") from e

    def delete_documents(self, collection: str, doc_ids: Iterable[str]) -> int:
        """Remove documents with all their chunks, in one commit; returns chunks removed."""
        from lancedb.expr import col, lit

        ids = sorted(set(doc_ids))
        if not ids:
            return 0
        with self.writer() as hold:
            table = self._table()
            if table is None:
                return 0
            hold.check()
            try:
                result = table.delete(
                    col("doc_id").isin(ids) & (col("collection") == lit(collection))
                )
            except (OSError, RuntimeError, ValueError) as e:
                raise StoreError(f"removing {len(ids)} document(s): {e}") from e
            return int(result.num_deleted_rows)

    def remove_documents(
        self, collection: str, match: Callable[[StoredDocument], bool]
    ) -> tuple[list[StoredDocument], int]:
        """Remove the matching documents in one commit; returns them and the chunks removed.

        Its compaction keeps REMOVAL_KEEP_VERSIONS_S of versions whatever
        storage.keep_versions_s says, so a removal (`rag docs rm`, DELETE /api/documents)
        is never an erasure.
        """
        with self.writer():
            docs = [d for d in self.documents(collection).values() if match(d)]
            chunks = self.delete_documents(collection, [d.doc_id for d in docs])
            if docs:
                self.maintain(wrote=True, keep_versions_s=REMOVAL_KEEP_VERSIONS_S)
        return docs, chunks

    # -- upkeep (rag.index.upkeep does the work on the table) ----------------------------

    def maintain(self, wrote: bool, *, keep_versions_s: float | None = None) -> bool:
        """Keep the full-text index current and fragments and versions bounded, after a run
        (see upkeep.refresh_indexes); versions older than `keep_versions_s` (default: the
        store's) are pruned. Returns whether it wrote."""
        keep_s = self.keep_versions_s if keep_versions_s is None else keep_versions_s
        with self.writer() as hold:
            self.tables.drop_stale()
            table = self._table()
            if table is None:
                return False
            return refresh_indexes(table, wrote, keep_s, self.vector_index_rows, hold.check)

    def compact(self, keep_versions_s: float, *, erase: bool = False) -> None:
        """Compact, reindex and prune the active table (`rag maintain`; see
        upkeep.compact_table for what `erase` adds)."""
        with self.writer() as hold:
            self.tables.drop_stale()
            table = self._table(check=False)
            if table is not None:
                compact_table(
                    table, keep_versions_s, self.vector_index_rows, hold.check, erase=erase
                )

    def build_table(self, model: str, dim: int, batches: Iterable[list[dict[str, Any]]]) -> int:
        """Write `batches` of rows into a new table; make it the active one when complete.

        A crash before the switch leaves the old table active and untouched; the half-built
        one is dropped by the next maintain() or build_table().
        """
        with self.writer() as hold:
            self.tables.drop_stale()
            name = f"{TABLE}-{time.time_ns()}"
            schema = chunk_schema(model, dim)
            rows = fill_table(self.tables.create(name, schema), schema, batches, hold.check)
            old = self.tables.active_name()
            hold.check()
            self.tables.set_active(name)
            self._opened = None
            self.embedding_model, self.dim = model, dim
            self.tables.drop(old)
            return rows


def open_store(
    data_path: Path,
    embedding_model: str | None,
    dim: int,
    read_consistency_s: float | None = None,
    *,
    lock_wait_s: float = 600.0,
    keep_versions_s: float = 86400.0,
    location: IndexLocation | None = None,
    lease_s: float = 30.0,
) -> Store:
    """Open the index under `data_path` (creating the directory if needed), or at `location`.

    `read_consistency_s` makes a long-lived reader (the web service) see writes made by other
    processes (`rag ingest`, on any machine) within that many seconds; None reads the state
    at open time. `embedding_model` None opens whatever model built the index, for listing
    and removing. `location` (rag.index.location) puts the index elsewhere, e.g. in a bucket;
    `data_path` stays this machine's state directory.
    """
    tables = connect(data_path, location, read_consistency_s)
    return Store(
        tables,
        embedding_model,
        dim,
        lock_wait_s=lock_wait_s,
        keep_versions_s=keep_versions_s,
        read_consistency_s=read_consistency_s,
        lease_s=lease_s,
    )


# Versions a removal's own compaction keeps (`rag docs rm`, DELETE /api/documents): a day,
# whatever storage.keep_versions_s says, so that retention 0 (erasure) stays the explicit
# act of `rag maintain`, which reports and verifies it.
REMOVAL_KEEP_VERSIONS_S = 86400.0


def open_index(
    storage: StorageSettings,
    embedding_model: str | None,
    dim: int,
    read_consistency_s: float | None = None,
    *,
    vector_index_rows: int | None = None,
) -> Store:
    """open_store with everything the [storage] settings say: where, lock wait, retention.

    Writers pass retrieval.vector_index_rows: the size at which their compactions build
    the vector index.
    """

    store = open_store(
        storage.data_path,
        embedding_model,
        dim,
        read_consistency_s,
        lock_wait_s=storage.lock_wait_s,
        keep_versions_s=storage.keep_versions_s,
        location=index_location(storage),
        lease_s=storage.lease_s,
    )
    if vector_index_rows is not None:
        store.vector_index_rows = vector_index_rows
    return store

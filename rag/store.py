"""The index: one LanceDB table of chunks with their vectors, under the data dir or in a bucket.

All collections share the table; every read and write filters on the `collection` column
with expression objects, never with request text pasted into SQL. Each write (a batch of
whole documents, or a removal) is one commit, so a reader never sees half a document, and
every write happens under the index's writer lock (rag.writelock): the data dir's flock,
or with storage.uri = s3://… the bucket's writer lease (rag.lease), checked before each
commit. Any number of readers, on any machine, may open the same index.

The embedding model's name and dimension live in the table's schema metadata; opening the
index with another model is refused. `rag ingest --reembed` builds a new table beside the
active one and switches the `active-table` pointer file only when the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.chunkrows import DocumentWrite, check_schema, chunk_rows, chunk_schema, to_arrow
from rag.config import StorageSettings
from rag.errors import StoreError
from rag.objectstore import IndexLocation, local_location, store_error
from rag.records import Chunk, Passage
from rag.writelock import Hold, write_lock

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

TABLE = "chunks"
POINTER_FILE = "active-table"
FTS_INDEX = "text_idx"
VECTOR_INDEX = "vector_idx"
# HNSW candidates per query (LanceDB's default is 1.5 x limit). At 100k chunks 256 raised
# recall@10 against exact search from 0.82 to 0.95 at the same ~8 ms (bench/retrieval.py);
# without a vector index it has no effect.
HNSW_EF = 256


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
        db: Any,
        data_path: Path,
        embedding_model: str | None,
        dim: int,
        *,
        lock_wait_s: float = 600.0,
        keep_versions_s: float = 86400.0,
        read_consistency_s: float | None = None,
        location: IndexLocation | None = None,
        lease_s: float = 30.0,
    ) -> None:
        self._db = db
        self.data_path = data_path
        self.location = location or local_location(data_path)
        self.lease_s = lease_s
        self._client: Any | None = None
        self.embedding_model = embedding_model
        self.dim = dim
        self.lock_wait_s = lock_wait_s
        self.keep_versions_s = keep_versions_s
        self._read_consistency_s = read_consistency_s
        self._opened: Any | None = None
        self._opened_name = ""
        self._pointer_checked = 0.0

    # -- tables ---------------------------------------------------------------------------

    def active_table_name(self) -> str:
        if self.location.remote:
            from rag.objectstore import read_object

            text = read_object(self._s3(), self.location, POINTER_FILE)
            return (text or b"").decode().strip() or TABLE
        try:
            return (self.data_path / POINTER_FILE).read_text().strip() or TABLE
        except FileNotFoundError:
            return TABLE
        except OSError as e:
            raise StoreError(f"cannot read {self.data_path / POINTER_FILE}: {e}") from e

    def _s3(self) -> Any:
        if self._client is None:
            from rag.objectstore import s3_client

            self._client = s3_client(self.location)
        return self._client

    def _set_pointer(self, name: str) -> None:
        if self.location.remote:
            from rag.objectstore import write_object

            write_object(self._s3(), self.location, POINTER_FILE, (name + "\n").encode())
        else:
            _replace_file(self.data_path / POINTER_FILE, name)

    def _table(self, create: bool = False, check: bool = True) -> Any | None:
        self._follow_pointer()
        if self._opened is None:
            name = self.active_table_name()
            try:
                self._opened = self._db.open_table(name)
            except (OSError, RuntimeError, ValueError) as e:
                # Only LanceDB's "Table 'chunks' was not found" means there is no index yet;
                # refused credentials or an unreachable store must not read as an empty one.
                if "was not found" not in str(e):
                    raise self._error(e, f"opening table {name}") from e
                if not create:
                    return None
                if self.embedding_model is None:
                    raise StoreError("cannot create the index without an embedding model") from None
                schema = chunk_schema(self.embedding_model, self.dim)
                try:
                    self._opened = self._db.create_table(name, schema=schema, exist_ok=True)
                except (OSError, RuntimeError, ValueError) as e:
                    raise self._error(e, f"creating table {name}") from e
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
        if self.active_table_name() != self._opened_name:
            self._opened = None

    def _error(self, e: BaseException, doing: str) -> StoreError:
        if self.location.remote:
            return store_error(e, self.location, doing)
        return StoreError(f"{doing} at {self.location.uri}: {e}")

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
        chunks = [_passage(r, 0.0) for r in rows]
        return sorted(chunks, key=lambda p: (p.doc_id, p.chunk_index))

    def collections(self) -> list[str]:
        """Names of the collections that hold at least one chunk."""
        table = self._table()
        if table is None:
            return []
        column = table.search().select(["collection"]).limit(None).to_arrow()["collection"]
        return sorted(set(column.to_pylist()))

    def doc_hashes(self) -> set[str]:
        """The content hash of every stored document, all collections (rag.originals)."""
        table = self._table(check=False)
        if table is None:
            return set()
        # The latest version: a writer in another process may have committed since we opened.
        table.checkout_latest()
        column = table.search().select(["doc_hash"]).limit(None).to_arrow()["doc_hash"]
        return set(column.to_pylist())

    def search(self, collection: str, vector: np.ndarray, k: int) -> list[Passage]:
        """The k chunks nearest to `vector` by cosine similarity (the passage's score)."""
        from lancedb.expr import col, lit

        table = self._table()
        if table is None:
            return []
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
        return [_passage(r, 1.0 - float(r["_distance"])) for r in rows]

    def text_search(
        self, collection: str, query: str, k: int, vector: np.ndarray | None = None
    ) -> list[Passage]:
        """The k chunks that best match `query` by full-text search (BM25), best first.

        The query is a match query object, never parsed as query syntax, so quotes,
        operators and field names in user text are plain words; the collection filter is an
        expression object. With `vector` each passage's score is its cosine similarity to it
        (as in `search`), else its BM25 score.
        """
        return [p for p, _ in self.keyword_search(collection, query, k, vector)]

    def keyword_search(
        self, collection: str, query: str, k: int, vector: np.ndarray | None = None
    ) -> list[tuple[Passage, float]]:
        """`text_search` with each passage's BM25 score beside it (score-aware fusion
        weighs both)."""
        from lancedb.expr import col, lit
        from lancedb.query import MatchQuery

        table = self._table()
        if table is None or not query.strip():
            return []
        columns = [*PASSAGE_COLUMNS, "_score", *(["vector"] if vector is not None else [])]
        try:
            rows = (
                table.search(MatchQuery(query, "text"), query_type="fts")
                .where(col("collection") == lit(collection), prefilter=True)
                .select(columns)
                .limit(k)
                .to_list()
            )
        except (OSError, RuntimeError, ValueError) as e:
            raise StoreError(f"full-text search failed: {e}") from e
        if vector is None or not rows:
            return [(_passage(r, float(r["_score"])), float(r["_score"])) for r in rows]
        import numpy as np

        sims = np.asarray([r["vector"] for r in rows], dtype=np.float32) @ vector.astype(np.float32)
        return [
            (_passage(r, float(sim)), float(r["_score"])) for r, sim in zip(rows, sims, strict=True)
        ]

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

    def replace_document(
        self,
        collection: str,
        doc_id: str,
        doc_hash: str,
        pipeline: str,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
    ) -> None:
        """Write one document's chunks and delete its stale ones, in one commit."""
        self.write_documents(
            collection, [DocumentWrite(doc_id, doc_hash, pipeline, "", chunks, vectors)]
        )

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

    def maintain(self, wrote: bool, *, keep_versions_s: float | None = None) -> bool:
        """Keep the full-text index current and fragments and versions bounded.

        After a run that wrote: build the FTS index if missing, else fold new rows into it,
        compact and prune versions older than `keep_versions_s` (default: the store's). A
        run that wrote nothing changes nothing unless a crash left the index missing or
        behind. Returns whether it wrote.
        """
        keep_s = self.keep_versions_s if keep_versions_s is None else keep_versions_s
        from lancedb.index import FTS

        with self.writer() as hold:
            self._drop_stale_tables()
            table = self._table()
            if table is None or table.count_rows() == 0:
                return False
            indexed = {i.name for i in table.list_indices()}
            behind = FTS_INDEX in indexed and table.index_stats(FTS_INDEX).num_unindexed_rows > 0
            if not wrote and FTS_INDEX in indexed and not behind:
                return False
            hold.check()
            try:
                if FTS_INDEX not in indexed:
                    table.create_index("text", config=FTS(), name=FTS_INDEX)
                self._ensure_vector_index(table, indexed)
                table.optimize(cleanup_older_than=timedelta(seconds=keep_s))
            except (OSError, RuntimeError, ValueError) as e:
                raise StoreError(f"maintaining the index: {e}") from e
            return True

    def _ensure_vector_index(self, table: Any, indexed: set[str]) -> None:
        """Build the HNSW index once the table is large enough (queries pass cosine too)."""
        from lancedb.index import HnswSq

        if not self.vector_index_rows or VECTOR_INDEX in indexed:
            return
        if table.count_rows() >= self.vector_index_rows:
            table.create_index("vector", config=HnswSq(distance_type="cosine"), name=VECTOR_INDEX)

    def compact(self, keep_versions_s: float, *, erase: bool = False) -> None:
        """Compact fragments, fold new rows into the indexes, prune older versions (`rag maintain`).

        Unlike maintain() it always runs, on an empty table too: old versions of an emptied
        table still hold the deleted rows. `erase` (retention 0) also rebuilds the indexes
        from the live rows, since an index built before a delete keeps the deleted rows'
        tokens and quantized vectors (an emptied table keeps its whole index; it is dropped),
        and deletes files that no version references (a killed writer's, which hold text).
        That is safe only with no other writer at work, which the writer lock held here
        guarantees. Rows deleted but left in place by compaction are not removed here; see
        rag.maintenance.
        """
        from lancedb.index import FTS

        with self.writer() as hold:
            self._drop_stale_tables()
            table = self._table(check=False)
            if table is None:
                return
            hold.check()
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
                    self._ensure_vector_index(table, indexed)
                with warnings.catch_warnings():
                    # LanceDB warns that retention 0 breaks readers of older versions: the
                    # operator chose it (documented with storage.keep_versions_s).
                    warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0")
                    table.optimize(
                        cleanup_older_than=timedelta(seconds=keep_versions_s),
                        delete_unverified=erase,
                    )
            except (OSError, RuntimeError, ValueError) as e:
                raise StoreError(f"compacting the index: {e}") from e

    # -- rebuilding with another model ----------------------------------------------------

    def build_table(self, model: str, dim: int, batches: Iterable[list[dict[str, Any]]]) -> int:
        """Write `batches` of rows into a new table; make it the active one when complete.

        A crash before the switch leaves the old table active and untouched; the half-built
        one is dropped by the next maintain() or build_table().
        """
        from lancedb.index import FTS

        with self.writer() as hold:
            self._drop_stale_tables()
            name = f"{TABLE}-{time.time_ns()}"
            schema = chunk_schema(model, dim)
            try:
                table = self._db.create_table(name, schema=schema)
                rows = 0
                for batch in batches:
                    if batch:
                        hold.check()
                        table.add(to_arrow(batch, schema))
                        rows += len(batch)
                if rows:
                    table.create_index("text", config=FTS(), name=FTS_INDEX)
                    table.optimize()
            except (OSError, RuntimeError, ValueError) as e:
                raise StoreError(f"building the new index table: {e}") from e
            old = self.active_table_name()
            hold.check()
            self._set_pointer(name)
            self._opened = None
            self.embedding_model, self.dim = model, dim
            with contextlib.suppress(Exception):  # a reader may still hold it; retried later
                self._db.drop_table(old)
            return rows

    def _drop_stale_tables(self) -> None:
        active = self.active_table_name()
        for name in self._table_names():
            if name != active and (name == TABLE or name.startswith(f"{TABLE}-")):
                with contextlib.suppress(Exception):
                    self._db.drop_table(name)

    def _table_names(self) -> list[str]:
        listing = self._db.list_tables()
        return list(getattr(listing, "tables", listing))


PASSAGE_COLUMNS = (
    "chunk_id",
    "source",
    "page",
    "heading",
    "text",
    "doc_id",
    "chunk_index",
    "char_start",
    "char_end",
)


def _passage(row: dict[str, Any], score: float) -> Passage:
    return Passage(
        chunk_id=row["chunk_id"],
        source=row["source"],
        page=row["page"],
        heading=row["heading"] or "",
        text=row["text"],
        score=round(score, 4),
        doc_id=row["doc_id"],
        chunk_index=-1 if row["chunk_index"] is None else int(row["chunk_index"]),
        char_start=-1 if row["char_start"] is None else int(row["char_start"]),
        char_end=-1 if row["char_end"] is None else int(row["char_end"]),
        chunk_ids=(row["chunk_id"],),
    )


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    and removing. `location` (rag.objectstore) puts the index elsewhere, e.g. in a bucket;
    `data_path` stays this machine's state directory.
    """
    import lancedb

    location = location or local_location(data_path)
    interval = None if read_consistency_s is None else timedelta(seconds=read_consistency_s)
    try:
        data_path.mkdir(parents=True, exist_ok=True)
        db = lancedb.connect(
            location.uri,
            read_consistency_interval=interval,
            storage_options=location.storage_options or None,
        )
    except (OSError, RuntimeError, ValueError) as e:
        if location.remote:
            raise store_error(e, location, "opening the index") from e
        raise StoreError(f"cannot open the index at {data_path}: {e}") from e
    return Store(
        db,
        data_path,
        embedding_model,
        dim,
        lock_wait_s=lock_wait_s,
        keep_versions_s=keep_versions_s,
        read_consistency_s=read_consistency_s,
        location=location,
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
    from rag.objectstore import index_location

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

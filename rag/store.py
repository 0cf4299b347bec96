"""The index: one LanceDB table of chunks with their vectors, under the data dir.

All collections share the table; every read and write filters on the `collection` column
with expression objects, never with request text pasted into SQL. Each document's chunks are
replaced in one commit, so a reader never sees half a document.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import StoreError
from rag.records import Chunk, Passage

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

TABLE = "chunks"


@dataclass(frozen=True, slots=True)
class StoredDocument:
    doc_id: str
    source: str
    doc_hash: str
    pipeline: str
    chunks: int


class Store:
    def __init__(self, db: Any, embedding_model: str, dim: int) -> None:
        self._db = db
        self.embedding_model = embedding_model
        self.dim = dim
        self._opened: Any | None = None

    def _table(self, create: bool = False) -> Any | None:
        if self._opened is None:
            try:
                self._opened = self._db.open_table(TABLE)
            except ValueError:  # LanceDB's "Table 'chunks' was not found"
                if not create:
                    return None
                self._opened = self._db.create_table(TABLE, schema=self._schema(), exist_ok=True)
            self._check_model(self._opened.schema)
        return self._opened

    def _schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema(
            [
                pa.field("chunk_id", pa.string(), nullable=False),
                pa.field("doc_id", pa.string(), nullable=False),
                pa.field("collection", pa.string(), nullable=False),
                pa.field("source", pa.string(), nullable=False),
                pa.field("page", pa.int32()),
                pa.field("heading", pa.string()),
                pa.field("text", pa.string()),
                pa.field("char_start", pa.int64()),
                pa.field("char_end", pa.int64()),
                pa.field("chunk_index", pa.int32()),
                pa.field("doc_hash", pa.string()),
                pa.field("pipeline", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), self.dim)),
            ],
            metadata={"embedding_model": self.embedding_model, "embedding_dim": str(self.dim)},
        )

    def _check_model(self, schema: pa.Schema) -> None:
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        stored = (meta.get("embedding_model"), meta.get("embedding_dim"))
        if stored != (self.embedding_model, str(self.dim)):
            raise StoreError(
                f"the index was built with embedding model {stored[0]} ({stored[1]}-d) but "
                f"embedding.model is {self.embedding_model} ({self.dim}-d); set embedding.model "
                "back, or use a new storage.data_dir and ingest again"
            )

    def documents(self, collection: str) -> dict[str, StoredDocument]:
        """Every stored document of a collection, by doc_id."""
        from lancedb.expr import col, lit

        table = self._table()
        if table is None:
            return {}
        rows = (
            table.search()
            .where(col("collection") == lit(collection))
            .select(["doc_id", "source", "doc_hash", "pipeline"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        found: dict[str, StoredDocument] = {}
        for row in rows:
            doc = found.get(row["doc_id"])
            count = doc.chunks + 1 if doc else 1
            found[row["doc_id"]] = StoredDocument(
                row["doc_id"], row["source"], row["doc_hash"], row["pipeline"], count
            )
        return found

    def replace_document(
        self,
        collection: str,
        doc_id: str,
        doc_hash: str,
        pipeline: str,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
    ) -> None:
        """Write a document's chunks and delete its stale ones, in one commit."""
        from lancedb.expr import col, lit

        rows = [
            {
                "chunk_id": c.chunk_id,
                "doc_id": doc_id,
                "collection": collection,
                "source": c.source,
                "page": c.page,
                "heading": c.heading,
                "text": c.text,
                "char_start": c.char_start,
                "char_end": c.char_end,
                "chunk_index": c.index,
                "doc_hash": doc_hash,
                "pipeline": pipeline,
                "vector": vector.tolist(),
            }
            for c, vector in zip(chunks, vectors, strict=True)
        ]
        table = self._table(create=True)
        try:
            (
                table.merge_insert("chunk_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(
                    (col("doc_id") == lit(doc_id)) & (col("collection") == lit(collection))
                )
                .execute(_to_arrow(rows, table.schema))
            )
        except (OSError, RuntimeError, ValueError) as e:
            raise StoreError(f"writing {chunks[0].source if chunks else doc_id}: {e}") from e

    def delete_documents(self, collection: str, doc_ids: Iterable[str]) -> int:
        from lancedb.expr import col, lit

        table = self._table()
        if table is None:
            return 0
        deleted = 0
        for doc_id in doc_ids:
            result = table.delete(
                (col("doc_id") == lit(doc_id)) & (col("collection") == lit(collection))
            )
            deleted += result.num_deleted_rows
        return deleted

    def search(self, collection: str, vector: np.ndarray, k: int) -> list[Passage]:
        from lancedb.expr import col, lit

        table = self._table()
        if table is None:
            return []
        rows = (
            table.search(vector.tolist(), vector_column_name="vector")
            # Without an explicit metric LanceDB uses l2 until a cosine index exists.
            .distance_type("cosine")
            .where(col("collection") == lit(collection), prefilter=True)
            .select(["chunk_id", "source", "page", "heading", "text", "_distance"])
            .limit(k)
            .to_list()
        )
        return [
            Passage(
                chunk_id=r["chunk_id"],
                source=r["source"],
                page=r["page"],
                heading=r["heading"] or "",
                text=r["text"],
                score=round(1.0 - float(r["_distance"]), 4),
            )
            for r in rows
        ]

    def count_chunks(self, collection: str) -> int:
        return sum(d.chunks for d in self.documents(collection).values())

    def collections(self) -> list[str]:
        """Names of the collections that hold at least one chunk."""
        table = self._table()
        if table is None:
            return []
        names = table.search().select(["collection"]).limit(None).to_arrow()["collection"]
        return sorted(set(names.to_pylist()))


def _to_arrow(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)


def open_store(
    data_path: Path, embedding_model: str, dim: int, read_consistency_s: float | None = None
) -> Store:
    """Open (creating the directory if needed) the index under `data_path`.

    `read_consistency_s` makes a long-lived reader (the web service) see writes made by other
    processes (`rag ingest`) within that many seconds; None reads the state at open time.
    """
    import lancedb

    try:
        data_path.mkdir(parents=True, exist_ok=True)
        interval = None if read_consistency_s is None else timedelta(seconds=read_consistency_s)
        db = lancedb.connect(data_path / "lancedb", read_consistency_interval=interval)
    except OSError as e:
        raise StoreError(f"cannot open the index at {data_path}: {e}") from e
    return Store(db, embedding_model, dim)

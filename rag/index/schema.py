"""The chunk table's shape: its schema, the rows one document becomes, and the check that
refuses a table built with another embedding model or by an older version of rag."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.errors import StoreError
from rag.records import Chunk, Passage

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# Columns without which a table predates this code and must be rebuilt (--reembed).
REQUIRED_COLUMNS = ("chunk_id", "doc_id", "collection", "path", "text_hash", "vector")


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """One document's complete new set of chunks, with their vectors."""

    doc_id: str
    doc_hash: str
    pipeline: str
    path: str
    chunks: Sequence[Chunk]
    vectors: np.ndarray


def chunk_schema(model: str, dim: int) -> pa.Schema:
    """The table's columns; the embedding model's name and dimension ride in its metadata."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("collection", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("path", pa.string()),
            pa.field("page", pa.int32()),
            pa.field("heading", pa.string()),
            # Stored as plain bytes, not compressed (Lance would use FSST): an erasure
            # (`rag maintain` with retention 0) is then checkable with a byte search of the
            # data dir, by our tests and by an auditor. Costs ~10% more data on disk.
            pa.field("text", pa.string(), metadata={"lance-encoding:compression": "none"}),
            pa.field("char_start", pa.int64()),
            pa.field("char_end", pa.int64()),
            pa.field("chunk_index", pa.int32()),
            pa.field("text_hash", pa.string()),
            pa.field("doc_hash", pa.string()),
            pa.field("pipeline", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ],
        metadata={"embedding_model": model, "embedding_dim": str(dim)},
    )


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def chunk_rows(collection: str, doc: DocumentWrite) -> list[dict[str, Any]]:
    return [
        {
            "chunk_id": c.chunk_id,
            "doc_id": doc.doc_id,
            "collection": collection,
            "source": c.source,
            "path": doc.path,
            "page": c.page,
            "heading": c.heading,
            "text": c.text,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "chunk_index": c.index,
            "text_hash": text_hash(c.text),
            "doc_hash": doc.doc_hash,
            "pipeline": doc.pipeline,
            "vector": vector.tolist(),
        }
        for c, vector in zip(doc.chunks, doc.vectors, strict=True)
    ]


def check_schema(schema: pa.Schema, model: str | None, dim: int) -> None:
    """Raise StoreError unless the table was built with `model` (None: any) by this rag."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    stored = (meta.get("embedding_model"), meta.get("embedding_dim"))
    if model is not None and stored != (model, str(dim)):
        raise StoreError(
            f"the index was built with embedding model {stored[0]} ({stored[1]}-d) but "
            f"embedding.model is {model} ({dim}-d); set embedding.model back, or run "
            "`rag ingest --reembed` to rebuild the index with the new model"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise StoreError(
            f"the index predates this version of rag (no {', '.join(missing)} column); "
            "run `rag ingest --reembed` to rebuild it"
        )


def to_arrow(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)


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


def to_passage(row: dict[str, Any], score: float) -> Passage:
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

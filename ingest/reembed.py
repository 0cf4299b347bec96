"""Rebuild the whole index (every collection) with another embedding model.

The stored chunk texts are the source: no file needs to be read again, so documents whose
files have moved survive. A chunk longer than the new model's input limit is split with the
chunker. The new table is built beside the old one and switched in only when complete
(Store.build_table); a crash or Ctrl-C leaves the old index in service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from ingest.chunker import Window, split_text
from ingest.pipeline import embed_sorted
from ingest.report import Progress, ProgressMeter
from rag.config import ChunkingSettings
from rag.embed.embedder import Embedder
from rag.index.schema import text_hash
from rag.index.store import Store

_COLUMNS = (
    "chunk_id",
    "doc_id",
    "collection",
    "source",
    "path",
    "page",
    "heading",
    "text",
    "char_start",
    "char_end",
    "chunk_index",
    "doc_hash",
    "pipeline",
)
# Stored rows re-embedded per batch written to the new table.
_BATCH_ROWS = 2048


def reembed(
    store: Store,
    embedder: Embedder,
    chunking: ChunkingSettings,
    batch_size: int = 32,
    on_progress: Callable[[Progress], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> int:
    """Re-embed every stored chunk with `embedder` into a new table; return its chunk count."""
    window = Window.fit(embedder, chunking.chunk_tokens, chunking.overlap_tokens)
    meter = ProgressMeter(on_progress, 0)

    def batches() -> Iterator[list[dict[str, Any]]]:
        for rows in store.scan(_COLUMNS, _BATCH_ROWS):
            fitted = [piece for row in rows for piece in _fit(row, embedder, window)]
            texts = [row["text"] or "" for row in fitted]

            def between(n: int) -> None:
                meter.chunks += n
                meter.work_done += n
                meter.emit("reembedding")

            vectors = embed_sorted(embedder, texts, batch_size, between)
            for row, vector in zip(fitted, vectors, strict=True):
                row["vector"] = vector.tolist()
                row["text_hash"] = text_hash(row["text"] or "")
            yield fitted

    with store.writer(on_wait):
        meter.work_total = store.row_count()
        meter.start_work()
        return store.build_table(embedder.name, embedder.dim, batches())


def _fit(row: dict[str, Any], embedder: Embedder, window: Window) -> list[dict[str, Any]]:
    """The row itself, or its text split into pieces that fit the new model's input."""
    text = row["text"] or ""
    if embedder.count_tokens(text) <= window.max_input:
        return [dict(row)]
    pieces: list[dict[str, Any]] = []
    for n, span in enumerate(split_text(text, embedder, window)):
        piece = text[span.char_start : span.char_end]
        digest = hashlib.sha256(f"{row['chunk_id']}\0{n}\0{piece}".encode()).hexdigest()[:24]
        base = row["char_start"] or 0
        pieces.append(
            {
                **row,
                "chunk_id": digest,
                "text": piece,
                "char_start": base + span.char_start,
                "char_end": base + span.char_end,
            }
        )
    return pieces

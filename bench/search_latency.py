"""Search latency at scale for bench/retrieval.py: real chunks plus generated ones.

The large tables hold a set's real chunks plus generated ones: real text windows with
vectors made from the real chunks' embeddings plus noise (cosine ~0.75 to their origin, so
the vector index sees clustered data as in real use; pure random vectors defeat any ANN
index). The vector index is built by Store.maintain exactly as after an ingest.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rag.config import RetrievalSettings
from rag.embed.embedder import Embedder
from rag.index.schema import chunk_schema
from rag.index.store import Store, open_store
from rag.qa.retrieval import Retriever


def synthetic_table(store: Store, source: Store, collection: str, size: int, seed: int) -> None:
    """`source`'s real chunks plus generated ones up to `size` rows, in one table."""
    import numpy as np

    from rag.index.schema import to_arrow

    rng = np.random.default_rng(seed)
    real = source.scan(_ROW_COLUMNS)
    rows = [row for batch in real for row in batch]
    base = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    words = " ".join(r["text"] for r in rows).split()
    table = store._table(create=True)
    schema = table.schema
    batch: list[dict[str, Any]] = []
    for n in range(size):
        if n < len(rows):
            row = dict(rows[n])
        else:
            start = int(rng.integers(0, len(words) - 130))
            vector = base[int(rng.integers(0, len(base)))] + 0.05 * rng.standard_normal(
                base.shape[1]
            ).astype(np.float32)
            row = dict(rows[n % len(rows)])
            row.update(
                chunk_id=f"gen-{n}",
                doc_id=f"gen-doc-{n // 20}",
                source=f"generated/{n // 20}.txt",
                chunk_index=n % 20,
                heading="",
                text=" ".join(words[start : start + 120]),
                vector=(vector / np.linalg.norm(vector)).tolist(),
            )
        # One chunk in ten belongs to another collection, so the filter does work.
        row["collection"] = collection if n % 10 else "other"
        batch.append(row)
        if len(batch) == 10_000:
            table.add(to_arrow(batch, schema))
            batch = []
    if batch:
        table.add(to_arrow(batch, schema))


# Every stored column, vectors included: the generated rows copy real ones.
_ROW_COLUMNS = chunk_schema("", 1).names


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency(
    sizes: list[int],
    source: Store,
    queries: list[str],
    embedder: Embedder,
    settings: RetrievalSettings,
) -> None:
    """Search latency p50/p95 per mode on tables of each size made from `source`'s chunks."""
    from lancedb.expr import col, lit

    print("== Search latency (store search, query embedded beforehand), ms")
    vectors = [embedder.embed_query(q) for q in queries]
    started = time.perf_counter()
    times = []
    for q in queries[:50]:
        t0 = time.perf_counter()
        embedder.embed_query(q)
        times.append(1000 * (time.perf_counter() - t0))
    print(
        f"  query embedding: p50 {percentile(times, 0.5):.1f} p95 {percentile(times, 0.95):.1f}"
        f" ({time.perf_counter() - started:.1f} s for 50)"
    )
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            store = open_store(Path(tmp), embedder.name, embedder.dim)
            store.vector_index_rows = settings.vector_index_rows
            t0 = time.perf_counter()
            synthetic_table(store, source, "bench", size, seed=size)
            written = time.perf_counter() - t0
            t0 = time.perf_counter()
            store.maintain(wrote=True)
            built = time.perf_counter() - t0
            table = store._table()
            indexes = sorted(i.name for i in table.list_indices())
            print(
                f"  {size} chunks: written in {written:.0f} s, indexes {indexes} built in "
                f"{built:.0f} s"
            )
            retriever = Retriever(store, embedder, settings)
            for mode in ("vector", "hybrid"):
                times = []
                for query, vector in zip(queries * 2, vectors * 2, strict=True):
                    t0 = time.perf_counter()
                    retriever.search_by(query, vector, "bench", settings.k, mode)
                    times.append(1000 * (time.perf_counter() - t0))
                times = times[10:]  # warm-up
                print(
                    f"    {mode:6}  p50 {percentile(times, 0.5):6.1f}  "
                    f"p95 {percentile(times, 0.95):6.1f}  ({len(times)} queries)"
                )
            if "vector_idx" in indexes:
                recall = []
                for vector in vectors[:40]:
                    exact = (
                        table.search(vector.tolist(), vector_column_name="vector")
                        .distance_type("cosine")
                        .where(col("collection") == lit("bench"), prefilter=True)
                        .bypass_vector_index()
                        .select(["chunk_id", "_distance"])
                        .limit(10)
                        .to_list()
                    )
                    ann = store.search("bench", vector, 10)
                    wanted = {r["chunk_id"] for r in exact}
                    recall.append(len(wanted & {p.chunk_id for p in ann}) / 10)
                print(f"    vector index recall@10 vs exact search: {statistics.mean(recall):.3f}")

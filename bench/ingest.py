"""Ingest throughput on a real corpus, per embedding backend, and what the pipeline costs.

One run, for each backend (torch, then the int8 ONNX one): `rag`'s whole ingest (parse in
worker processes, chunk, embed, write, index) of the Debian FAQ in its HTML, PDF and text
editions, then `encode()` alone on exactly the chunks it stored, then the Debian FAQ eval
set's questions against that index. It prints pages/s and chunks/s, the ratio
pipeline / encode (the pipeline's overhead; target >= 0.85), the int8 backend's speed-up
over torch (target >= 2x) and hit@5 / MRR of both (target: within 1 point).

    python bench/ingest.py [--device cpu|cuda|mps] [--batch-size 32]

The corpus and the questions come from bench/build_debian_faq_eval.py (apt-get download
debian-faq, unpacked into ~/.cache/rag-bench; needs `apt-get update` to have run). The
questions name their chapter's HTML file, so hits in the PDF and text editions of the same
answer count as misses: both backends face the same handicap.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.build_debian_faq_eval import DEFAULT_CACHE, build  # noqa: E402
from ingest.report import Progress  # noqa: E402
from ingest.run import run_ingest  # noqa: E402
from rag.config import (  # noqa: E402
    ChunkingSettings,
    EmbeddingSettings,
    IngestSettings,
    RetrievalSettings,
)
from rag.embed.embedder import Embedder, load_embedder  # noqa: E402
from rag.index.store import open_store  # noqa: E402
from rag.ops.evaluation import DEPTH, evaluate, load_questions  # noqa: E402
from rag.qa.retrieval import Retriever  # noqa: E402

BACKENDS = ("torch", "onnx-int8")


def corpus_dir(faq: Path, into: Path) -> Path:
    """The FAQ's HTML chapters plus its PDF and text editions (from `faq`), unpacked, in
    `into`/FAQ."""
    target = into / "FAQ"  # eval sources are named FAQ/<chapter>.en.html
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(faq.iterdir()):
        if path.name.endswith(".en.html"):
            shutil.copy(path, target / path.name)
        elif path.name.endswith((".en.pdf.gz", ".en.txt.gz")) and not path.is_symlink():
            (target / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    return target


def measure(
    embedder: Embedder, corpus: Path, questions: list[Any], batch_size: int
) -> dict[str, Any]:
    """Pipeline, bare encode() of the same chunks, and retrieval quality, for one backend."""
    # Warm the model up so neither measurement pays for first-call set-up.
    embedder.embed_documents(["warm up"] * batch_size, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as data:
        store = open_store(Path(data), embedder.name, embedder.dim)
        last: list[Progress] = []
        started = time.perf_counter()
        report = run_ingest(
            [corpus],
            collection="bench",
            chunking=ChunkingSettings(),
            embedder=embedder,
            store=store,
            batch_size=batch_size,
            on_progress=last.append,
            ingest=IngestSettings(),
        )
        pipeline_s = time.perf_counter() - started
        texts = [row["text"] for batch in store.scan(["text"]) for row in batch]

        retriever = Retriever(store, embedder, RetrievalSettings())
        quality = evaluate(
            questions,
            lambda q: (retriever.search(q.question, "bench", DEPTH), None),
            lambda _query, _passages: False,
        ).to_json()

    started = time.perf_counter()
    embedder.embed_documents(texts, batch_size=batch_size)
    encode_s = time.perf_counter() - started
    chunks = len(texts)
    return {
        "model": embedder.name,
        "files": report.added + len(report.failed),
        "failed": report.failed,
        "pages": report.pages,
        "chunks": chunks,
        "pipeline_s": round(pipeline_s, 2),
        "encode_s": round(encode_s, 2),
        "pages_per_s": round(report.pages / pipeline_s, 2),
        "chunks_per_s": round(chunks / pipeline_s, 2),
        "encode_chunks_per_s": round(chunks / encode_s, 2),
        "ratio": round(encode_s / pipeline_s, 3),
        "hit_at_5": quality["hit_at_5"],
        "mrr": quality["mrr"],
        "last_progress": repr(last[-1]) if last else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    faq, questions_file = build(DEFAULT_CACHE)
    questions = [q for q in load_questions(questions_file) if q.answerable]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_dir(faq, Path(tmp))
        for backend in BACKENDS:
            started = time.perf_counter()
            embedder = load_embedder(EmbeddingSettings(device=args.device, backend=backend))
            loaded_s = time.perf_counter() - started
            r = results[backend] = measure(embedder, corpus, questions, args.batch_size)
            print(
                f"{backend:9} {r['model']} on {embedder.device} (loaded in {loaded_s:.1f} s): "
                f"{r['files']} files, {r['pages']} pages, {r['chunks']} chunks"
            )
            print(
                f"  pipeline {r['pipeline_s']:7.2f} s {r['pages_per_s']:6.1f} pages/s "
                f"{r['chunks_per_s']:6.1f} chunks/s | encode() {r['encode_s']:7.2f} s "
                f"{r['encode_chunks_per_s']:6.1f} chunks/s | ratio {r['ratio']:.3f} "
                f"(target >= 0.85)"
            )
            print(
                f"  retrieval on {len(questions)} Debian FAQ questions: hit@5 "
                f"{100 * r['hit_at_5']:.1f}%  MRR {r['mrr']:.3f}"
            )
            if r["failed"]:
                print(f"  failed: {r['failed']}")
    torch, fast = results["torch"], results["onnx-int8"]
    print(
        f"onnx-int8 / torch: pipeline x{torch['pipeline_s'] / fast['pipeline_s']:.2f}, "
        f"encode() x{torch['encode_s'] / fast['encode_s']:.2f} (target >= 2x); hit@5 "
        f"{100 * (fast['hit_at_5'] - torch['hit_at_5']):+.1f} points, MRR "
        f"{fast['mrr'] - torch['mrr']:+.3f} (target: within 1 point)"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

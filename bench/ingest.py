"""Ingest throughput on a real corpus, and what the pipeline costs over bare embedding.

One run: `rag`'s whole ingest (parse in worker processes, chunk, embed, write, index) of the
Debian FAQ in its HTML, PDF and text editions, then `encode()` alone on exactly the chunks it
stored. The ratio pipeline/encode (chunks per second) shows the pipeline's overhead; the
target is >= 0.85.

    python bench/ingest.py [CORPUS_DIR] [--device cpu|cuda|mps] [--batch-size 32]
                           [--backend torch|onnx-int8]

encode() is then also timed on the other embedding backend (torch or the int8 ONNX one),
with the cosine between the two backends' vectors.

Without CORPUS_DIR the debian-faq package is fetched with apt-get (download only, unpacked
into a temp dir; needs `apt-get update` to have run) and its documents used.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.pipeline import Progress, run_ingest  # noqa: E402
from rag.config import ChunkingSettings, EmbeddingSettings, IngestSettings  # noqa: E402
from rag.embedder import load_embedder  # noqa: E402
from rag.errors import RagError  # noqa: E402
from rag.store import open_store  # noqa: E402

FAQ_DIR = "usr/share/doc/debian/FAQ"


def fetch_debian_faq(into: Path) -> Path:
    """Download and unpack debian-faq; copy its HTML, PDF and text editions into `into`."""
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            ["apt-get", "download", "debian-faq"], cwd=tmp, capture_output=True, text=True
        )
        if got.returncode != 0:
            sys.exit(f"apt-get download debian-faq failed (run apt-get update?): {got.stderr}")
        deb = next(Path(tmp).glob("debian-faq_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "root")], check=True)
        source = Path(tmp) / "root" / FAQ_DIR
        into.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.name.endswith(".en.html"):
                shutil.copy(path, into / path.name)
            elif path.name.endswith((".en.pdf.gz", ".en.txt.gz")) and not path.is_symlink():
                (into / path.name.removesuffix(".gz")).write_bytes(
                    gzip.decompress(path.read_bytes())
                )
    return into


def compare_backends(
    args: argparse.Namespace, texts: list[str], name: str, vectors: np.ndarray, encode_s: float
) -> dict[str, float]:
    """encode() of the same chunks on the other backend: speed-up and agreement."""
    other = "onnx-int8" if args.backend == "torch" else "torch"
    try:
        embedder = load_embedder(EmbeddingSettings(device=args.device, backend=other))
    except RagError as e:
        print(f"backends  {other} not measured: {e.message}")
        return {}
    embedder.embed_documents(["warm up"] * args.batch_size, batch_size=args.batch_size)
    started = time.perf_counter()
    others = embedder.embed_documents(texts, batch_size=args.batch_size)
    other_s = time.perf_counter() - started
    cosine = (vectors * others).sum(axis=1)
    onnx_s, torch_s = (other_s, encode_s) if other == "onnx-int8" else (encode_s, other_s)
    print(
        f"backends  encode() torch {len(texts) / torch_s:6.1f} chunks/s, onnx-int8 "
        f"{len(texts) / onnx_s:6.1f} chunks/s: x{torch_s / onnx_s:.2f}; cosine to each other "
        f"min {cosine.min():.4f} mean {cosine.mean():.4f}"
    )
    return {
        "torch_chunks_per_s": round(len(texts) / torch_s, 2),
        "onnx_int8_chunks_per_s": round(len(texts) / onnx_s, 2),
        "onnx_speedup": round(torch_s / onnx_s, 3),
        "cosine_min": round(float(cosine.min()), 5),
        "cosine_mean": round(float(cosine.mean()), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, help="documents to ingest")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--backend", default="torch", choices=["torch", "onnx-int8"], help="for the pipeline run"
    )
    args = parser.parse_args()
    corpus = args.corpus or Path(tempfile.gettempdir()) / "rag-bench-debian-faq"
    if not corpus.exists() or not any(corpus.iterdir()):
        fetch_debian_faq(corpus)

    started = time.perf_counter()
    embedder = load_embedder(EmbeddingSettings(device=args.device, backend=args.backend))
    print(
        f"model     {embedder.name} on {embedder.device}, loaded in "
        f"{time.perf_counter() - started:.1f} s"
    )
    # Warm the model up so neither measurement pays for first-call set-up.
    embedder.embed_documents(["warm up"] * args.batch_size, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as data:
        store = open_store(Path(data), embedder.name, embedder.dim)
        last: list[Progress] = []

        def keep_last(progress: Progress) -> None:
            last[:] = [progress]

        started = time.perf_counter()
        report = run_ingest(
            [corpus],
            collection="bench",
            chunking=ChunkingSettings(),
            embedder=embedder,
            store=store,
            batch_size=args.batch_size,
            on_progress=keep_last,
            ingest=IngestSettings(),
        )
        pipeline_s = time.perf_counter() - started
        table = store._db.open_table(store.active_table_name())
        texts = table.search().select(["text"]).limit(None).to_arrow()["text"].to_pylist()

    started = time.perf_counter()
    vectors = embedder.embed_documents(texts, batch_size=args.batch_size)
    encode_s = time.perf_counter() - started
    backends = compare_backends(args, texts, embedder.name, vectors, encode_s)

    chunks = len(texts)
    pipeline_rate, encode_rate = chunks / pipeline_s, chunks / encode_s
    ratio = pipeline_rate / encode_rate
    files = report.added + len(report.failed)
    print(f"corpus    {corpus}: {files} files, {report.pages} pages, {chunks} chunks")
    if report.failed:
        print(f"failed    {report.failed}")
    print(
        f"pipeline  {pipeline_s:7.2f} s  {report.pages / pipeline_s:7.1f} pages/s  "
        f"{pipeline_rate:7.1f} chunks/s"
    )
    print(f"encode()  {encode_s:7.2f} s  {'':15} {encode_rate:7.1f} chunks/s")
    print(f"ratio     pipeline / encode = {ratio:.3f}  (target >= 0.85)")
    print(
        json.dumps(
            {
                "device": embedder.device,
                "files": files,
                "pages": report.pages,
                "chunks": chunks,
                "pipeline_s": round(pipeline_s, 3),
                "encode_s": round(encode_s, 3),
                "pages_per_s": round(report.pages / pipeline_s, 2),
                "chunks_per_s": round(pipeline_rate, 2),
                "encode_chunks_per_s": round(encode_rate, 2),
                "ratio": round(ratio, 3),
                "last_progress": repr(last[0]) if last else None,
                "backends": backends,
            }
        )
    )


if __name__ == "__main__":
    main()

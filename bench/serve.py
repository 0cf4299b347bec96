"""What the HTTP service costs on top of the engine, and how many searches it serves.

In one run, on the sample documents: the same question answered by the Answerer called in
this process and by `rag serve` over HTTP (streamed), alternating so that both see the
same machine, with latency, time to first token and decode tokens/s measured by the caller
on both sides; then /api/search requests per second from 8 concurrent clients.

    python bench/serve.py [--answer-tokens 32] [--rounds 2] [--k 2] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from rag.config import load_settings  # noqa: E402
from rag.records import Answer, Delta  # noqa: E402

QUESTION = "How quickly must the on-call engineer acknowledge a page?"
SEARCH = "how many vacation days do employees get"


@dataclass
class Run:
    latency_s: float
    ttft_s: float
    tokens_per_s: float  # completion tokens after the first, over the time they took
    prompt_tokens: int
    completion_tokens: int
    # The engine's own clock (Answer.usage): what the caller waited beyond it is spent
    # outside generation (retrieval, packing and, over HTTP, the service).
    engine_ttft_s: float = 0.0
    engine_decode_s: float = 0.0


def _run(started: float, first: float | None, done: float, answer: dict) -> Run:
    u = answer["usage"]
    n = u["completion_tokens"]
    first = first if first is not None else done
    decode_s = done - first
    engine_tps = u["tokens_per_s"]
    return Run(
        done - started,
        first - started,
        (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
        u["prompt_tokens"],
        n,
        u["ttft_s"],
        (n - 1) / engine_tps if n > 1 and engine_tps > 0 else 0.0,
    )


def ask_direct(answerer, k: int) -> Run:
    started, first = time.perf_counter(), None
    for item in answerer.stream(QUESTION, "default", k):
        if isinstance(item, Delta) and first is None:
            first = time.perf_counter()
        elif isinstance(item, Answer):
            return _run(started, first, time.perf_counter(), item.to_json())
    raise RuntimeError("no answer")


def ask_http(base: str, k: int) -> Run:
    started, first, event = time.perf_counter(), None, ""
    body = {"question": QUESTION, "k": k, "stream": True}
    with httpx.stream("POST", f"{base}/api/ask", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "token" and first is None:
                first = time.perf_counter()
            elif line.startswith("data:") and event == "done":
                done = time.perf_counter()
                return _run(started, first, done, json.loads(line.split(":", 1)[1]))
    raise RuntimeError("the stream ended without a done event")


def search_load(base: str, clients: int, seconds: float) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                ok = http.post("/api/search", json={"query": SEARCH}).status_code == 200
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    errors += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), errors, latencies


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.latency_s for r in runs),
        statistics.median(r.ttft_s for r in runs),
        statistics.median(r.tokens_per_s for r in runs),
        runs[0].prompt_tokens,
        runs[0].completion_tokens,
        statistics.median(r.engine_ttft_s for r in runs),
        statistics.median(r.engine_decode_s for r in runs),
    )


def outside_engine_s(r: Run) -> float:
    return r.latency_s - r.engine_ttft_s - r.engine_decode_s


def show(label: str, r: Run) -> None:
    print(
        f"/api/ask {label:<22} latency {r.latency_s:6.2f} s  ttft {r.ttft_s:6.2f} s  "
        f"decode {r.tokens_per_s:5.2f} tok/s  ({r.prompt_tokens} prompt, "
        f"{r.completion_tokens} answer tokens)"
    )


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rag = Path(sys.executable).parent / "rag"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(rag), "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("rag serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="timed answers per side")
    parser.add_argument("--k", type=int, default=2, help="passages per answer")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--search-seconds", type=float, default=10.0)
    args = parser.parse_args()

    from ingest.run import run_ingest
    from rag.qa.answerer import load_answerer

    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
        env.update(
            RAG_CONFIG=str(ROOT / "config.toml"),
            RAG_STORAGE_DATA_DIR=str(Path(tmp) / "data"),
            RAG_LLM_ANSWER_TOKENS=str(args.answer_tokens),
            RAG_SERVER_RATE_LIMIT_PER_MIN="0",  # measuring throughput, not the rate limit
            RAG_SERVER_MAX_QUEUE=str(max(8, args.clients)),
            HF_HUB_OFFLINE="1",
        )
        settings = load_settings(ROOT / "config.toml", env=env)
        answerer = load_answerer(settings)
        report = run_ingest(
            [ROOT / "samples"],
            collection="default",
            chunking=settings.chunking,
            embedder=answerer.embedder,
            store=answerer.store,
            ingest=settings.ingest,
        )
        print(f"index: {report.added} sample documents, {report.chunks} chunks")
        proc, base = start_server(env, Path(tmp) / "serve.log")
        try:
            print(
                f"model {answerer.engine.name}, answer_tokens {args.answer_tokens}, k {args.k}, "
                f"{args.rounds} timed rounds per side (median), alternating"
            )
            ask_direct(answerer, args.k)  # warm-up: first calls pay one-off setup
            ask_http(base, args.k)
            direct: list[Run] = []
            http: list[Run] = []
            for _ in range(args.rounds):
                direct.append(ask_direct(answerer, args.k))
                http.append(ask_http(base, args.k))
            d, h = median_run(direct), median_run(http)
            show("in-process Answerer", d)
            show("HTTP (rag serve, SSE)", h)
            print(
                f"HTTP overhead: latency {100 * (h.latency_s / d.latency_s - 1):+.1f}%, "
                f"ttft {100 * (h.ttft_s / d.ttft_s - 1):+.1f}%, decode tokens/s "
                f"{100 * (h.tokens_per_s / d.tokens_per_s - 1):+.1f}% (target: within 5%)"
            )
            # The engine's share moves with whatever else the CPU runs; the time outside it
            # is what the two paths do differently.
            od, oh = outside_engine_s(d), outside_engine_s(h)
            print(
                f"outside the engine: in-process {od:.2f} s, HTTP {oh:.2f} s; the service adds "
                f"{oh - od:+.2f} s = {100 * (oh - od) / h.latency_s:+.1f}% of the HTTP latency"
            )

            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < 2.0:
                answerer.search(SEARCH, "default", settings.retrieval.k)
                n += 1
            per_query = (time.perf_counter() - t0) / n
            print(
                f"/api/search in-process, 1 caller:  {1000 * per_query:6.1f} ms per query "
                f"({1 / per_query:5.1f} q/s)"
            )
            httpx.post(f"{base}/api/search", json={"query": SEARCH}, timeout=60)
            count, errors, lat = search_load(base, args.clients, args.search_seconds)
            lat.sort()
            p50, p95 = 1000 * lat[len(lat) // 2], 1000 * lat[int(len(lat) * 0.95)]
            print(
                f"/api/search HTTP, {args.clients} clients, {args.search_seconds:g} s: "
                f"{count} requests, {count / args.search_seconds:5.1f} req/s, "
                f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
                f"{errors} errors"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()

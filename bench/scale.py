"""Requests/s through nginx with one replica and with two, measured side by side in one run.

Each replica is a real `rag serve` on the sample index; nginx uses the deployment's own proxy
rules (compose/nginx/rag-proxy.conf). The load is `/api/search` (embed the query, hybrid
search) from N concurrent clients for a fixed time per setup. On a machine with fewer cores
than replicas x their threads, the replicas share the same CPUs and the ratio says so.

    python bench/scale.py [--clients 8] [--seconds 20]

Needs nginx (Debian package; `make test` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster import missing_tools, nginx  # noqa: E402
from tests.conftest import RAG, rag_env, start_server, stop_server  # noqa: E402

QUERIES = [
    "Which command promotes the standby database?",
    "How many vacation days do we get?",
    "What is the name of the company wiki?",
    "Who approves expense reports?",
]


async def load(url: str, clients: int, seconds: float) -> dict[str, float]:
    """`clients` loops posting searches for `seconds`; requests/s and latency percentiles."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            i = n
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                reply = await http.post(
                    "/api/search", json={"query": QUERIES[i % len(QUERIES)], "k": 4}
                )
                latencies.append(time.perf_counter() - started)
                errors += reply.status_code != 200
                i += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if missing_tools():
        sys.exit(f"needs {missing_tools()}: apt-get install nginx")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run(
            [str(RAG), "ingest", "samples/"],
            cwd=ROOT,
            env=rag_env(data),
            check=True,
            capture_output=True,
        )
        # No per-caller rate limit: the load is one caller on purpose.
        unlimited = {"RAG_SERVER_RATE_LIMIT_PER_MIN": "0"}
        replicas = [start_server(data, **unlimited), start_server(data, **unlimited)]
        urls = [base.removeprefix("http://") for _, base in replicas]
        results: dict[str, dict[str, float]] = {}
        try:
            for count in (1, 2):
                with nginx(Path(tmp) / f"nginx-{count}", urls[:count]) as lb:
                    asyncio.run(load(lb, args.clients, 2.0))  # warm-up, not counted
                    results[f"{count}_replica"] = asyncio.run(load(lb, args.clients, args.seconds))
                print(f"{count} replica(s): {json.dumps(results[f'{count}_replica'])}")
        finally:
            for proc, _ in replicas:
                stop_server(proc)
    failed = {name: r["errors"] for name, r in results.items() if r["errors"]}
    if failed:
        sys.exit(f"requests failed, so the rates mean nothing: {failed}")
    ratio = results["2_replica"]["requests_per_s"] / results["1_replica"]["requests_per_s"]
    print(
        f"/api/search through nginx, {args.clients} clients: 2 replicas / 1 replica = "
        f"{ratio:.2f}x requests/s"
    )
    print(json.dumps({"clients": args.clients, **results, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()

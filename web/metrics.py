"""Prometheus metrics at /metrics: HTTP traffic from Litestar's middleware, plus ours."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client import Counter, Gauge, Histogram

from rag.errors import AuthError
from rag.records import Answer

# Metric objects live in prometheus_client's process-wide registry, so they are created once
# here rather than per app (a second registration would be an error).
TTFT_S = Histogram(
    "rag_time_to_first_token_seconds",
    "Seconds from the start of generation to the first answer token.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)
DECODE_TOKENS_PER_S = Histogram(
    "rag_decode_tokens_per_second",
    "Answer tokens per second after the first token, per request.",
    buckets=(1, 2, 5, 10, 20, 40, 60, 80, 120, 200),
)
TOKENS = Counter(
    "rag_tokens",
    "Tokens processed, by direction (prompt or completion), API key and collection.",
    ["direction", "key", "collection"],
)
COST = Counter(
    "rag_cost",
    "Machine cost of answers (settings [cost]: write-off and power for their generation "
    "seconds), in cost.currency, by API key and collection.",
    ["key", "collection"],
)
MEMORY_PLANNED = Gauge(
    "rag_memory_planned_bytes",
    "Most memory the plan lets MLX hold (weights, KV cache, prefill) at the planned context.",
)
MEMORY_USED = Gauge("rag_memory_used_bytes", "Memory MLX holds now (active buffers and its cache).")
QUEUE_DEPTH = Gauge("rag_queue_depth", "Model requests running or waiting.")
INGEST_JOBS = Gauge("rag_ingest_jobs", "Upload ingest jobs, by state (queued, running).", ["state"])
INGEST_FILES_PENDING = Gauge(
    "rag_ingest_files_pending", "Uploaded files in queued or running jobs not yet ingested."
)
INGEST_FILES = Counter(
    "rag_ingest_files",
    "Uploaded files ingested, by outcome (indexed, unchanged, failed).",
    ["outcome"],
)
INGEST_CHUNKS = Counter("rag_ingest_chunks", "Chunks embedded by upload ingest jobs.")


def check_scrape_token(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """With API keys, /metrics answers only the scrape token (server.metrics_token).

    Its labels name API keys and collections, which a caller of another team must not learn.
    Without keys the service answers this machine only, and /metrics is open.
    """
    if not connection.app.state.keyring.keys():
        return
    expected = connection.app.state.models.settings.server.metrics_token
    header = connection.headers.get("authorization", "")
    sent = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise AuthError(
            "/metrics needs the scrape token, not an API key: "
            "'Authorization: Bearer <server.metrics_token>'"
            + ("" if expected else " (none is set, so /metrics is closed)")
        )


class MetricsController(PrometheusController):
    guards = [check_scrape_token]  # noqa: RUF012 (Litestar's layer attribute)


def make_prometheus_config() -> PrometheusConfig:
    # group_path: label requests by route template, not raw path, to bound cardinality.
    return PrometheusConfig(app_name="rag", prefix="rag", group_path=True)


def track_queue_depth(depth: Callable[[], int]) -> None:
    QUEUE_DEPTH.set_function(depth)


def record_answer(answer: Answer, collection: str, key: str = "anonymous") -> None:
    usage = answer.usage
    if usage.completion_tokens == 0:
        return
    TTFT_S.observe(usage.ttft_s)
    if usage.tokens_per_s > 0:
        DECODE_TOKENS_PER_S.observe(usage.tokens_per_s)
    TOKENS.labels("prompt", key, collection).inc(usage.prompt_tokens)
    TOKENS.labels("completion", key, collection).inc(usage.completion_tokens)


def track_memory(planned_bytes: int) -> None:
    import mlx.core as mx

    MEMORY_PLANNED.set(planned_bytes)
    # Reading the allocator's counters runs no kernel, so any thread may do it.
    MEMORY_USED.set_function(lambda: mx.get_active_memory() + mx.get_cache_memory())


def record_cost(amount: float, collection: str, key: str = "anonymous") -> None:
    COST.labels(key, collection).inc(amount)


def track_ingest(
    queued: Callable[[], int], running: Callable[[], int], files_pending: Callable[[], int]
) -> None:
    INGEST_JOBS.labels("queued").set_function(queued)
    INGEST_JOBS.labels("running").set_function(running)
    INGEST_FILES_PENDING.set_function(files_pending)


def record_ingest_chunks(chunks: int) -> None:
    if chunks > 0:
        INGEST_CHUNKS.inc(chunks)


def record_ingest_file(outcome: str) -> None:
    INGEST_FILES.labels(outcome).inc()

"""Prometheus metrics at /metrics: HTTP traffic from Litestar's middleware, plus ours."""

from __future__ import annotations

from collections.abc import Callable

from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import Counter, Gauge, Histogram

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
QUEUE_DEPTH = Gauge("rag_queue_depth", "Model requests running or waiting.")


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

"""Continuous batching on the bundled model: greedy, short outputs, structure only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.llm.base import Generation
from rag.llm.batching import Batcher
from rag.llm.mlx import MlxEngine
from rag.qa.prompts import SYSTEM_PROMPT
from rag.records import Delta
from tests.conftest import FAST_LLM_ENV, start_server, stop_server

pytestmark = pytest.mark.slow  # runs the LLM

QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "Write a long story about a dragon.",
]


def _ids(engine: MlxEngine, question: str) -> list[int]:
    return engine.encode_chat(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    )


def _run(
    engine: MlxEngine,
    ids: list[int],
    max_tokens: int,
    on_delta: Callable[[str], None] = lambda _: None,
    **options: Any,
) -> Generation:
    final = None
    for item in engine.stream(ids, max_tokens=max_tokens, context_tokens=2048, **options):
        if isinstance(item, Delta):
            on_delta(item.text)
        else:
            final = item
    assert final is not None
    return final


def _concurrently(*calls: Callable[[], Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def work(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


@pytest.fixture(scope="module")
def sequential(engine: MlxEngine) -> list[Generation]:
    """The single-request engine's greedy answers: what batching must reproduce."""
    assert engine.batcher is None
    return [_run(engine, _ids(engine, q), 12) for q in QUESTIONS]


@pytest.fixture
def batcher(engine: MlxEngine, sequential: list[Generation]) -> Iterator[Batcher]:
    batcher = engine.start_batching(3)
    try:
        yield batcher
    finally:
        engine.stop_batching()


def test_batched_outputs_equal_sequential_greedy_outputs(
    engine: MlxEngine, batcher: Batcher, sequential: list[Generation]
) -> None:
    assert batcher.batched
    engine.prefixes.clear()  # the first request prefills the system prompt as a segment
    ids = [_ids(engine, q) for q in QUESTIONS]
    batched = _concurrently(*(lambda i=i: _run(engine, i, 12) for i in ids))
    for got, want in zip(batched, sequential, strict=True):
        assert got.token_ids == want.token_ids
        assert got.finish_reason == want.finish_reason
        assert got.text == want.text
        assert got.peak_memory_bytes > 0 and got.ttft_s > 0
    # Its KV was stored at the segment's end; now requests start from it.
    again = _run(engine, ids[0], 12)
    assert again.cached_tokens > 40
    assert again.token_ids == sequential[0].token_ids
    # The generation thread updates its counters right after the step it sent the last token.
    deadline = time.monotonic() + 10
    while batcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.running == 0 and batcher.cache_bytes == 0


def test_cancelled_request_leaves_the_batch_while_the_others_continue(
    engine: MlxEngine, batcher: Batcher, sequential: list[Generation]
) -> None:
    assert sequential[2].finish_reason == "length"  # a long answer: it runs all 12 tokens
    gone = threading.Event()
    done = threading.Event()
    samples: list[tuple[bool, int, int]] = []  # (cancelled yet, running, cache bytes)

    def watch() -> None:
        while not done.wait(0.01):
            samples.append((gone.is_set(), batcher.running, batcher.cache_bytes))

    def cancelled() -> Generation:
        deltas: list[str] = []
        try:
            return _run(
                engine,
                _ids(engine, QUESTIONS[0]),
                12,
                on_delta=deltas.append,
                should_stop=lambda: len(deltas) >= 2,
            )
        finally:
            gone.set()

    def story() -> Generation:
        try:
            return _run(engine, _ids(engine, QUESTIONS[2]), 12)
        finally:
            done.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    first, second = _concurrently(cancelled, story)
    watcher.join()
    assert first.finish_reason == "cancelled" and first.completion_tokens < 12
    assert second.token_ids == sequential[2].token_ids
    both = [size for _, running, size in samples if running == 2]
    alone = [size for after, running, size in samples if after and running == 1]
    assert both and alone
    assert max(alone) < min(both)  # the cancelled request's KV cache was freed


def test_stop_strings_in_a_batch(engine: MlxEngine, batcher: Batcher) -> None:
    gen = _run(engine, _ids(engine, QUESTIONS[0]), 12, stop=["Paris"])
    assert gen.finish_reason == "stop"
    assert gen.text and "Paris" not in gen.text


def test_quantized_kv_falls_back_to_one_at_a_time(
    engine: MlxEngine, sequential: list[Generation]
) -> None:
    engine.kv_bits = 8
    batcher = engine.start_batching(2)
    try:
        assert not batcher.batched
        ids = [_ids(engine, q) for q in QUESTIONS[:2]]
        results = _concurrently(*(lambda i=i: _run(engine, i, 6) for i in ids))
    finally:
        engine.stop_batching()
        engine.kv_bits = None
    assert all(r.finish_reason in ("stop", "length") and r.token_ids for r in results)
    assert "Paris" in results[0].text or results[0].completion_tokens == 6


@pytest.fixture(scope="module")
def mlx_server(sample_data_dir: Path) -> Iterator[str]:
    """`rag serve` on MLX (llm.engine = "mlx"), which batches; "auto" may pick llama.cpp."""
    proc, base = start_server(sample_data_dir, RAG_LLM_ENGINE="mlx", **FAST_LLM_ENV)
    try:
        yield base
    finally:
        stop_server(proc)


def test_the_service_streams_concurrent_answers_together(mlx_server: str) -> None:
    """Two streamed questions at once over HTTP: the second does not wait for the first."""
    import httpx

    server = mlx_server

    events: dict[int, list[tuple[float, str]]] = {0: [], 1: []}

    def ask(i: int, question: str) -> None:
        with httpx.stream(
            "POST",
            f"{server}/api/ask",
            json={"question": question, "stream": True},
            timeout=600,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event:"):
                    events[i].append((time.monotonic(), line.split(":", 1)[1].strip()))

    _concurrently(
        lambda: ask(0, "How many vacation days do employees get?"),
        lambda: ask(1, "What is the name of the company wiki?"),
    )
    for i in (0, 1):
        kinds = [kind for _, kind in events[i]]
        assert kinds[-1] == "done" and "token" in kinds, kinds
    first_token = [next(t for t, kind in events[i] if kind == "token") for i in (0, 1)]
    done = [events[i][-1][0] for i in (0, 1)]
    # Batched: each answer's first token comes before the other answer is done.
    assert first_token[1] < done[0] and first_token[0] < done[1]

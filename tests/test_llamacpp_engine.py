"""The llama.cpp engine on the bundled GGUF: the promises MlxEngine makes, kept in process.

Greedy, short answers; structure and grounding, not prose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rag.config import LlmSettings
from rag.embed.embedder import Embedder
from rag.errors import ContextOverflowError
from rag.index.store import Store
from rag.llm.base import Generation
from rag.llm.llamacpp import LlamaCppEngine
from rag.llm.load import choose_engine
from rag.llm.mlx import mlx_backend
from rag.qa.answerer import Answerer
from rag.qa.prompts import SYSTEM_PROMPT
from rag.qa.rerank import RERANK_SYSTEM_PROMPT
from rag.records import Delta

pytestmark = pytest.mark.slow  # runs the LLM

GROUNDED = [
    {"role": "system", "content": SYSTEM_PROMPT},
    {
        "role": "user",
        "content": "Sources:\n[1] The capital of France is Paris.\n\n"
        "Question: What is the capital of France?",
    },
]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _run(
    engine: LlamaCppEngine, ids: list[int], max_tokens: int, **options: Any
) -> tuple[list[str], Generation]:
    deltas: list[str] = []
    final = None
    for item in engine.stream(ids, max_tokens=max_tokens, context_tokens=2048, **options):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            final = item
    assert isinstance(final, Generation)
    return deltas, final


def _fresh(engine: LlamaCppEngine) -> None:
    """No KV held or saved: the next request prefills every token."""
    engine.prefixes.clear()
    engine.reset()


def _long_prompt(engine: LlamaCppEngine, tokens: int) -> list[int]:
    words = " ".join(f"item{i}" for i in range(tokens))
    ids = engine.encode_chat([{"role": "user", "content": f"Summarize: {words}"}])
    return ids[: tokens - 8] + ids[-8:]  # cut in the middle: the template's end stays


def test_auto_picks_mlx_on_a_gpu_and_llama_cpp_on_a_cpu() -> None:
    gpu = mlx_backend()
    choice = choose_engine(LlmSettings())
    if gpu in ("metal", "cuda"):
        assert (choice.kind, choice.backend) == ("mlx", gpu)
        return
    assert (choice.kind, choice.backend) == ("llamacpp", "cpu")
    assert "no GPU" in choice.reason
    # llm.engine = "mlx" stays selectable, and is known to be the slow one here.
    mlx = choose_engine(LlmSettings(engine="mlx"))
    assert mlx.kind == "mlx" and mlx.slow


def test_greedy_grounded_answer_is_streamed_and_ends_at_end_of_turn(
    llamacpp_engine: LlamaCppEngine,
) -> None:
    engine = llamacpp_engine
    ids = engine.encode_chat(GROUNDED)
    deltas, gen = _run(engine, ids, 40)
    assert "Paris" in gen.text and "".join(deltas) == gen.text
    assert len(deltas) > 2  # streamed token by token, not at the end
    assert gen.finish_reason == "stop" and gen.completion_tokens < 40
    assert "<|im_end|>" not in gen.text
    assert gen.prompt_tokens == len(ids)
    assert gen.ttft_s > 0 and gen.tokens_per_s > 0 and gen.prefill_tokens_per_s > 0
    assert gen.peak_memory_bytes > 50 * 2**20  # the process's RSS: weights, KV, buffers
    # Greedy is deterministic, and the text is the tokens' own decoding.
    assert _run(engine, ids, 40)[1].token_ids == gen.token_ids
    assert engine.tokenizer.decode(list(gen.token_ids)) == gen.text


def test_the_ids_counted_are_the_ids_evaluated(llamacpp_engine: LlamaCppEngine) -> None:
    engine = llamacpp_engine
    tokenizer = engine.tokenizer
    ids = engine.encode_chat(GROUNDED)
    text = tokenizer.apply_chat_template(GROUNDED, add_generation_prompt=True, tokenize=False)
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    # llama.cpp's own tokenizer reads the rendered prompt the same way.
    assert ids == engine.llama.tokenize(text.encode(), add_bos=False, special=True)
    _fresh(engine)
    _, gen = _run(engine, ids, 6)
    llama = engine.llama
    assert gen.prompt_tokens == len(ids)
    assert [int(t) for t in llama.input_ids[: len(ids)]] == ids
    # Every answer token but the last was evaluated after the prompt, and nothing else.
    assert llama.n_tokens == len(ids) + gen.completion_tokens - 1


def test_a_prompt_over_the_context_is_refused_with_the_numbers(
    llamacpp_engine: LlamaCppEngine,
) -> None:
    engine = llamacpp_engine
    ids = engine.encode_chat([{"role": "user", "content": "word " * 300}])
    held = engine.llama.n_tokens
    with pytest.raises(ContextOverflowError) as refused:
        next(engine.stream(ids, max_tokens=20, context_tokens=200))
    assert refused.value.message == (
        f"the prompt needs {len(ids)} tokens + 20 for the answer = {len(ids) + 20}, "
        "over the 200-token context; ask a shorter question"
    )
    # The engine's own context (n_ctx, the planned one) caps a larger request's.
    assert engine.max_context_tokens == engine.llama.n_ctx() == 2048
    long = _long_prompt(engine, 2040)
    with pytest.raises(ContextOverflowError, match="over the 2048-token context"):
        next(engine.stream(long, max_tokens=20, context_tokens=100_000))
    assert engine.llama.n_tokens == held  # refused before anything was evaluated


def test_stop_strings_cut_the_answer_exactly(llamacpp_engine: LlamaCppEngine) -> None:
    engine = llamacpp_engine
    ids = engine.encode_chat(GROUNDED)
    _, full = _run(engine, ids, 16)
    assert "Paris" in full.text
    deltas, cut = _run(engine, ids, 16, stop=["Paris"])
    assert cut.text == "".join(deltas) == full.text[: full.text.index("Paris")]
    assert cut.finish_reason == "stop"
    # The engine's own stop strings (llm.stop) apply when a request gives none.
    engine.stop = ("France",)
    try:
        assert _run(engine, ids, 16)[1].text == full.text[: full.text.index("France")]
    finally:
        engine.stop = ()


def test_the_system_prompt_prefill_is_reused_and_restored(
    llamacpp_engine: LlamaCppEngine,
) -> None:
    engine = llamacpp_engine
    _fresh(engine)
    ids = engine.encode_chat(GROUNDED)
    prefix = engine.prefixes.match(ids)
    assert prefix is not None and 40 < len(prefix) < len(ids)
    _, first = _run(engine, ids, 8)
    assert first.cached_tokens == 0
    assert engine.prefixes.get(prefix) is not None  # its KV was saved at its end
    other = engine.encode_chat(
        [
            GROUNDED[0],
            {"role": "user", "content": "Sources:\n[1] Cats sleep.\n\nQuestion: Do cats sleep?"},
        ]
    )
    _, second = _run(engine, other, 4)
    assert second.cached_tokens >= len(prefix)  # kept in llama.cpp's KV from the last request
    # Another system prompt runs in between; the saved KV comes back for the next one.
    rerank = engine.encode_chat(
        [{"role": "system", "content": RERANK_SYSTEM_PROMPT}, {"role": "user", "content": "Yes?"}]
    )
    _run(engine, rerank, 2)
    _, restored = _run(engine, ids, 8)
    assert restored.cached_tokens == len(prefix)
    _fresh(engine)
    _, full = _run(engine, ids, 8)
    assert full.cached_tokens == 0
    assert restored.token_ids == first.token_ids == full.token_ids


def test_cancelling_mid_stream_ends_at_the_next_token(llamacpp_engine: LlamaCppEngine) -> None:
    engine = llamacpp_engine
    ids = engine.encode_chat([{"role": "user", "content": "Tell me a long story about a cat."}])
    deltas: list[str] = []
    items = list(
        item
        for item in engine.stream(
            ids, max_tokens=32, context_tokens=2048, should_stop=lambda: len(deltas) >= 3
        )
        if not isinstance(item, Delta) or deltas.append(item.text) is None
    )
    gen = items[-1]
    assert isinstance(gen, Generation) and gen.finish_reason == "cancelled"
    assert 3 <= gen.completion_tokens < 32 and gen.text == "".join(deltas)
    # The slot is free at once: the next request runs to its end.
    assert _run(engine, ids, 4)[1].finish_reason == "length"


def _stop_at(deadline: list[float]) -> Callable[[], bool]:
    return lambda: bool(deadline) and time.monotonic() >= deadline[0]


def test_cancelling_mid_prefill_of_a_long_prompt_returns_within_a_chunk(
    llamacpp_engine: LlamaCppEngine,
) -> None:
    engine = llamacpp_engine
    ids = _long_prompt(engine, 1900)
    _fresh(engine)
    stop_at = [time.monotonic() + 0.5]
    _, gen = _run(engine, ids, 8, should_stop=_stop_at(stop_at))
    late_s = time.monotonic() - stop_at[0]
    assert gen.finish_reason == "cancelled" and gen.completion_tokens == 0
    assert 0 < engine.llama.n_tokens < len(ids)  # the prefill was cut short
    assert late_s < 2.0, f"the cancel landed {late_s:.2f} s late"
    # What it evaluated is kept: the same prompt now starts from there.
    evaluated = engine.llama.n_tokens
    _, again = _run(engine, ids, 2, should_stop=_stop_at([time.monotonic() + 0.3]))
    assert again.cached_tokens == evaluated and again.finish_reason == "cancelled"


def test_under_the_generation_thread_requests_queue_and_score(
    llamacpp_engine: LlamaCppEngine, embedder: Embedder, store: Store
) -> None:
    engine = llamacpp_engine
    answerer = Answerer(store, embedder, engine, context_tokens=2048, answer_tokens=24)
    # One sequence at a time, whatever llm.concurrency asks for.
    assert engine.info.max_concurrency == 1 and answerer.concurrency(4) == 1
    ids = [engine.encode_chat(GROUNDED), engine.encode_chat(QUESTION)]
    alone = [_run(engine, i, 8)[1] for i in ids]
    batcher = engine.start_batching(answerer.concurrency(4))
    try:
        assert not batcher.batched
        results: list[Generation | None] = [None, None]
        done_at = [0.0, 0.0]

        def ask(n: int) -> None:
            results[n] = _run(engine, ids[n], 8)[1]
            done_at[n] = time.monotonic()

        threads = [threading.Thread(target=ask, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        # Scoring runs on the generation thread too, between requests.
        yes = engine.tokenizer.encode("Yes", add_special_tokens=False)[0]
        assert len(engine.score(ids[1], [yes])) == 1
        for t in threads:
            t.join(120)
        assert [r.token_ids for r in results if r] == [a.token_ids for a in alone]
        # A long request is stopped promptly when the thread closes (`rag serve`'s SIGTERM).
        long = _long_prompt(engine, 1900)
        engine.prefixes.clear()
        engine.call(engine.reset)
        ended: list[Generation] = []
        worker = threading.Thread(target=lambda: ended.append(_run(engine, long, 8)[1]))
        worker.start()
        time.sleep(0.8)
        closing = time.monotonic()
        engine.stop_batching()
        closed_s = time.monotonic() - closing
        worker.join(10)
        assert closed_s < 2.0, f"the generation thread took {closed_s:.2f} s to stop"
        assert ended and ended[0].finish_reason == "cancelled"
    finally:
        engine.stop_batching()
    # And the engine runs in this thread again.
    assert _run(engine, ids[1], 4)[1].finish_reason in ("stop", "length")

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rag.embed.embedder import Embedder
from rag.errors import ContextOverflowError
from rag.index.store import Store
from rag.llm.base import Generation
from rag.llm.mlx import MlxEngine
from rag.qa.answerer import Answerer
from rag.records import Delta, Passage


def _generate(
    engine: MlxEngine, question: str, max_tokens: int, **options: Any
) -> tuple[str, Generation]:
    ids = engine.encode_chat([{"role": "user", "content": question}])
    return _run(engine, ids, max_tokens, **options)


def _run(
    engine: MlxEngine, ids: list[int], max_tokens: int, **options: Any
) -> tuple[str, Generation]:
    deltas: list[str] = []
    final = None
    for item in engine.stream(ids, max_tokens=max_tokens, context_tokens=2048, **options):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            final = item
    assert final is not None
    return "".join(deltas), final


def _stop_after(calls: int) -> Callable[[], bool]:
    """A should_stop that turns true on its `calls`-th call."""
    count = 0

    def should_stop() -> bool:
        nonlocal count
        count += 1
        return count >= calls

    return should_stop


def test_bundled_model_answers_greedily_and_stops_at_end_of_turn(engine: MlxEngine) -> None:
    text, gen = _generate(engine, "What is the capital of France?", 40)
    assert "Paris" in text
    assert gen.text == text
    # It ended on the chat template's end-of-turn token, not on the token limit.
    assert gen.finish_reason == "stop"
    assert gen.completion_tokens < 40
    assert "<|im_end|>" not in text
    assert gen.prompt_tokens > 5 and gen.ttft_s > 0 and gen.tokens_per_s > 0
    # Greedy decoding is deterministic.
    assert _generate(engine, "What is the capital of France?", 40)[0] == text


def test_prompt_over_the_context_is_refused_before_generation(engine: MlxEngine) -> None:
    import mlx.core as mx

    ids = engine.encode_chat([{"role": "user", "content": "word " * 300}])
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    with pytest.raises(ContextOverflowError) as refused:
        next(engine.stream(ids, max_tokens=20, context_tokens=200))
    assert refused.value.message == (
        f"the prompt needs {len(ids)} tokens + 20 for the answer = {len(ids) + 20}, "
        "over the 200-token context; ask a shorter question"
    )
    # Refused before any KV cache or activation was allocated.
    assert mx.get_peak_memory() <= before


def test_stop_strings_cut_the_answer(engine: MlxEngine) -> None:
    text, gen = _generate(engine, "What is the capital of France?", 16, stop=["Paris"])
    assert text == gen.text == "The capital of France is "
    assert gen.finish_reason == "stop"
    # The engine's own stop strings (llm.stop) apply when a request gives none.
    engine.stop = ("France",)
    try:
        assert _generate(engine, "What is the capital of France?", 16)[0] == "The capital of "
    finally:
        engine.stop = ()


def test_prompt_cache_gives_the_same_tokens_as_a_full_prefill(engine: MlxEngine) -> None:
    from rag.qa.prompts import SYSTEM_PROMPT

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    ids = engine.encode_chat(messages)
    prefix = engine.prefixes.match(ids)
    assert prefix is not None and 40 < len(prefix) < len(ids)
    _, first = _run(engine, ids, 8)  # prefills the system prompt once and keeps its KV
    assert engine.prefixes.get(prefix) is not None
    _, cached = _run(engine, ids, 8)
    assert cached.cached_tokens == first.cached_tokens == len(prefix)
    engine.prefixes.clear()
    _, full = _run(engine, ids, 8)
    assert full.cached_tokens == 0
    assert cached.token_ids == first.token_ids == full.token_ids
    assert "Paris" in engine.tokenizer.decode(list(full.token_ids))


def test_cancelling_stops_mid_stream_and_frees_the_cache(engine: MlxEngine) -> None:
    import mlx.core as mx

    ids = engine.encode_chat([{"role": "user", "content": "Tell me a long story about a cat."}])
    _run(engine, ids, 1)  # the prefix cache is filled, so memory is steady from here
    before = mx.get_active_memory()
    deltas: list[str] = []
    items = list(
        item
        for item in engine.stream(
            ids, max_tokens=16, context_tokens=2048, should_stop=lambda: len(deltas) >= 3
        )
        if not isinstance(item, Delta) or deltas.append(item.text) is None
    )
    gen = items[-1]
    assert isinstance(gen, Generation)
    assert gen.finish_reason == "cancelled"
    assert 3 <= gen.completion_tokens < 16 and gen.text == "".join(deltas)
    # The request held a KV cache (one 256-token step: ~12 MB here), which is gone now;
    # what is left is a few small arrays (the last sampled token and such).
    assert gen.peak_memory_bytes > before + 8 * 2**20
    assert mx.get_active_memory() < before + 2**20
    # Cancelled from the prefill's progress callback, before any token.
    _, early = _run(engine, ids, 16, should_stop=_stop_after(2))
    assert early.finish_reason == "cancelled" and early.completion_tokens == 0


def test_quantized_kv_cache_generates(engine: MlxEngine) -> None:
    engine.kv_bits = 8
    try:
        text, gen = _generate(engine, "What is the capital of France?", 12)
    finally:
        engine.kv_bits = None
    assert "Paris" in text and gen.finish_reason == "stop"


def test_packing_drops_the_lowest_ranked_passages_first(
    engine: MlxEngine, embedder: Embedder, store: Store
) -> None:
    passages = [
        Passage(f"c{i}", "doc.md", None, "", f"Passage {i}. " + "filler words " * 40, 1 - i / 10)
        for i in range(4)
    ]
    answerer = Answerer(store, embedder, engine, context_tokens=400, answer_tokens=50)
    packing = answerer.pack("What is in passage 0?", passages)
    kept = packing.kept
    assert 0 < len(kept) < len(passages)
    assert kept == passages[: len(kept)]
    assert len(packing.prompt_ids) + 50 <= 400


def test_question_with_no_documents_says_so_without_generating(
    engine: MlxEngine, embedder: Embedder, store: Store
) -> None:
    answerer = Answerer(store, embedder, engine, context_tokens=2048, answer_tokens=20)
    answer = answerer.ask("Anything?", "default", 3)
    assert "Nothing in your documents" in answer.answer
    assert answer.citations == [] and answer.usage.completion_tokens == 0

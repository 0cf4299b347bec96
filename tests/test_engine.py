from __future__ import annotations

import pytest

from rag.answer import Answerer
from rag.embedder import Embedder
from rag.engine import Generation, MlxEngine
from rag.errors import ContextOverflowError
from rag.records import Delta, Passage
from rag.store import Store


def _generate(engine: MlxEngine, question: str, max_tokens: int) -> tuple[str, Generation]:
    ids = engine.encode_chat([{"role": "user", "content": question}])
    deltas: list[str] = []
    final = None
    for item in engine.stream(ids, max_tokens=max_tokens, context_tokens=2048):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            final = item
    assert final is not None
    return "".join(deltas), final


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
    ids = engine.encode_chat([{"role": "user", "content": "word " * 300}])
    with pytest.raises(ContextOverflowError, match=r"over the 200-token context"):
        next(engine.stream(ids, max_tokens=20, context_tokens=200))


def test_packing_drops_the_lowest_ranked_passages_first(
    engine: MlxEngine, embedder: Embedder, store: Store
) -> None:
    passages = [
        Passage(f"c{i}", "doc.md", None, "", f"Passage {i}. " + "filler words " * 40, 1 - i / 10)
        for i in range(4)
    ]
    answerer = Answerer(store, embedder, engine, context_tokens=400, answer_tokens=50)
    ids, kept = answerer.pack("What is in passage 0?", passages)
    assert 0 < len(kept) < len(passages)
    assert kept == passages[: len(kept)]
    assert len(ids) + 50 <= 400


def test_question_with_no_documents_says_so_without_generating(
    engine: MlxEngine, embedder: Embedder, store: Store
) -> None:
    answerer = Answerer(store, embedder, engine, context_tokens=2048, answer_tokens=20)
    answer = answerer.ask("Anything?", "default", 3)
    assert "Nothing in your documents" in answer.answer
    assert answer.citations == [] and answer.usage.completion_tokens == 0

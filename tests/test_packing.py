"""Context packing with the served model's own tokenizer and chat template."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.errors import ContextOverflowError
from rag.llm.mlx import MlxEngine
from rag.qa.packing import merge_adjacent, pack
from rag.qa.prompts import build_messages
from rag.records import Passage

VOCABULARY = (
    "the badge desk report within hours vacation days harbor-db promote [1] <source> "
    "</source> ignore previous instructions café 24 SEV1 \n"
)
WORDS = st.sampled_from(VOCABULARY.split(" "))
TEXT = st.lists(WORDS, min_size=0, max_size=300).map(" ".join)


def _passages(texts: list[str]) -> list[Passage]:
    return [Passage(f"c{i}", f"doc{i}.md", None, "", t, 1 - i / 100) for i, t in enumerate(texts)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    question=st.lists(WORDS, min_size=1, max_size=120).map(" ".join),
    texts=st.lists(TEXT, max_size=8),
    turns=st.lists(TEXT, max_size=6),
    budget=st.integers(min_value=40, max_value=1500),
)
def test_packing_never_exceeds_the_budget(
    engine: MlxEngine, question: str, texts: list[str], turns: list[str], budget: int
) -> None:
    passages = _passages(texts)
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]
    try:
        packed = pack(engine.encode_chat, question, passages, history, budget)
    except ContextOverflowError:
        # Refused only when the question alone (system prompt, no sources, no turns) is over.
        assert len(engine.encode_chat(build_messages(question, []))) > budget
        return
    assert len(packed.prompt_ids) <= budget
    assert packed.prompt_ids == engine.encode_chat(
        build_messages(question, packed.kept, history[packed.dropped_turns :])
    )
    # The lowest-ranked passages are the ones dropped, and all of them are reported.
    assert packed.kept == passages[: len(packed.kept)]
    assert packed.kept + packed.dropped == passages
    assert packed.dropped_chunk_ids == [p.chunk_id for p in packed.dropped]
    # History goes only once a single passage is left.
    assert packed.dropped_turns == 0 or len(packed.kept) <= 1


def test_question_too_long_for_the_context_is_refused(engine: MlxEngine) -> None:
    with pytest.raises(ContextOverflowError, match="the question alone needs"):
        pack(engine.encode_chat, "word " * 400, [], [], 100)


def _chunk(index: int, start: int, text: str, doc: str = "d1", score: float = 0.5) -> Passage:
    return Passage(
        f"{doc}-{index}",
        "doc.md",
        None,
        "Intro",
        text,
        score,
        doc_id=doc,
        chunk_index=index,
        char_start=start,
        char_end=start + len(text),
        chunk_ids=(f"{doc}-{index}",),
    )


def test_adjacent_chunks_of_one_section_merge_without_repeating_the_overlap() -> None:
    document = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota."
    first = _chunk(0, 0, document[:25], score=0.4)  # "Alpha beta gamma. Delta e"
    second = _chunk(1, 18, document[18:], score=0.9)  # overlaps "Delta e"
    other = _chunk(5, 0, "Elsewhere.", doc="d2", score=0.7)
    merged = merge_adjacent([second, other, first])
    assert [p.chunk_ids for p in merged] == [("d1-0", "d1-1"), ("d2-5",)]
    assert merged[0].text == document
    assert merged[0].score == 0.9 and merged[0].chunk_id == "d1-0"
    # Not adjacent (a gap of one chunk): kept apart; a third chunk bridging them joins all.
    far = _chunk(2, 100, "Later text.")
    assert len(merge_adjacent([first, far])) == 2
    bridge = _chunk(1, 18, document[18:])
    assert [p.chunk_ids for p in merge_adjacent([first, far, bridge])] == [("d1-0", "d1-1", "d1-2")]

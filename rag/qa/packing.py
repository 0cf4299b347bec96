"""Fit the prompt into the planned context: merge neighbouring chunks, then drop what must go.

Counting is done on the exact prompt the model will see (its tokenizer and chat template),
so system prompt + history + passages + question + answer reserve never exceed the context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rag.errors import ContextOverflowError
from rag.qa.prompts import Message, build_messages
from rag.records import Passage


@dataclass(frozen=True, slots=True)
class Packing:
    prompt_ids: list[int]
    kept: list[Passage]
    # Passages left out, lowest-ranked first dropped; earlier turns left out (oldest first).
    dropped: list[Passage]
    dropped_turns: int
    # The chat the prompt encodes (for a second prompt that starts like it).
    messages: list[Message]

    @property
    def dropped_chunk_ids(self) -> list[str]:
        return [chunk_id for p in self.dropped for chunk_id in (p.chunk_ids or (p.chunk_id,))]


def merge_adjacent(passages: Sequence[Passage]) -> list[Passage]:
    """Join passages that are consecutive chunks of one section (same document, page and
    heading) into one passage, in document order, ranked where its best member was."""
    runs: dict[tuple[str, int | None, str], list[list[Passage]]] = {}
    order: list[list[Passage]] = []
    for passage in passages:
        if not passage.doc_id or passage.chunk_index < 0:
            order.append([passage])
            continue
        groups = runs.setdefault((passage.doc_id, passage.page, passage.heading), [])
        touching = [
            g for g in groups if any(abs(p.chunk_index - passage.chunk_index) <= 1 for p in g)
        ]
        if not touching:
            group = [passage]
            groups.append(group)
            order.append(group)
            continue
        # The new passage may bridge two runs: fold the later ones into the first.
        first, *rest = touching
        first.append(passage)
        for other in rest:
            first.extend(other)
            groups[:] = [g for g in groups if g is not other]
            order[:] = [g for g in order if g is not other]
    return [_joined(group) for group in order]


def _joined(group: list[Passage]) -> Passage:
    if len(group) == 1:
        return group[0]
    members = sorted({p.chunk_id: p for p in group}.values(), key=lambda p: p.chunk_index)
    text, end = members[0].text, members[0].char_end
    for p in members[1:]:
        overlap = end - p.char_start if end >= 0 and p.char_start >= 0 else 0
        if overlap <= 0:
            text += "\n" + p.text
        elif overlap < len(p.text):
            text += p.text[overlap:]
        end = max(end, p.char_end)
    return replace(
        members[0],
        text=text,
        score=max(p.score for p in members),
        char_end=end,
        # A member may be a merged passage already (retrieval merges neighbours too).
        chunk_ids=tuple(c for p in members for c in (p.chunk_ids or (p.chunk_id,))),
    )


def pack(
    encode: Callable[[list[Message]], list[int]],
    question: str,
    passages: Sequence[Passage],
    history: Sequence[Message],
    budget_tokens: int,
) -> Packing:
    """The prompt with as many passages and turns as fit in `budget_tokens`.

    Drops the lowest-ranked passages first down to one, then the oldest turns of the history
    (a question with its answer at a time), then the last passage. Raises
    ContextOverflowError when even the question alone does not fit.
    """
    kept, turns = list(passages), list(history)
    while True:
        messages = build_messages(question, kept, turns)
        ids = encode(messages)
        if len(ids) <= budget_tokens:
            dropped = list(passages[len(kept) :])
            return Packing(ids, kept, dropped, len(history) - len(turns), messages)
        if len(kept) > 1:
            kept.pop()
        elif turns:
            turns = turns[2:]
        elif kept:
            kept.pop()
        else:
            raise ContextOverflowError(
                f"the question alone needs {len(ids)} prompt tokens, over the "
                f"{budget_tokens} left after the answer reserve; ask a shorter question"
            )

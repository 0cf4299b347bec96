"""Follow-up questions become standalone search queries, using the conversation so far.

"Can they be carried over?" after "How many vacation days do we get?" cannot be searched as
asked. Two ways are offered (`retrieval.rewrite`):

- "rules": when the follow-up leans on earlier turns (a pronoun such as it/they/this, an
  opening like "and"/"what about", or two content words or fewer), the key terms of the
  previous user question are added to it. Deterministic and instant.
- "llm": the answer model rewrites the question from the conversation (32 tokens at most).

Measured with `python bench/retrieval.py --conversation-llm` on the 10 follow-ups of
samples/questions.jsonl (history = the earlier question): as asked, hit@1 60% / hit@5 90%;
"rules" 80% / 100% at 0.02 s; "llm" 100% / 100% at 6 s each on this CPU. The 135M model
does not rewrite, though: it answers the follow-up from thin air ("The Lantern version of
SAML was released in 2018.", "The answer is no, they cannot be carried over..."), which
helps the search because it repeats the earlier question's words, but is wrong, and would
be shown to the user as `rewritten_query`. "rules" stays the default; "llm" is for a
model that follows the instruction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.llm.base import Generation
from rag.qa.prompts import Message

if TYPE_CHECKING:
    from rag.llm.base import Engine

_WORD = re.compile(r"[\w][\w'./-]*")


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that point back at something named earlier.
_ANAPHORA = _wordset(
    "it its it's they them their theirs this these those he him his she her such "
    "same former latter one ones"
)
_OPENINGS = ("and ", "also ", "what about ", "how about ", "and what ", "but ", "then ")
_STOP = _wordset(
    """a an the of to in on at by for from with without about as into over under and or but
    not no yes is are was were be been being am do does did done have has had having can
    could shall should will would may might must i me my mine we us our you your what which
    who whom whose when where why how there here that than then so if else also just only
    very more most much many some any each every all both either neither other another
    please tell know get got let lets need want like way ok okay"""
)

REWRITE_SYSTEM_PROMPT = (
    "Rewrite the user's last question as one standalone question that can be understood "
    "without the conversation. Reply with the rewritten question only."
)


def content_words(text: str) -> list[str]:
    words = [w.strip(".'-/").lower() for w in _WORD.findall(text)]
    return [w for w in words if w and w not in _STOP and w not in _ANAPHORA]


def needs_context(question: str) -> bool:
    """Whether the question leans on earlier turns to be understood."""
    lowered = " " + question.lower().strip() + " "
    words = {w.strip(".'-/").lower() for w in _WORD.findall(question)}
    return (
        bool(words & _ANAPHORA)
        or lowered.lstrip().startswith(_OPENINGS)
        or len(content_words(question)) <= 2
    )


def rule_rewrite(question: str, history: Sequence[Message]) -> str | None:
    """The question with the earlier question's key terms added, or None when it stands alone."""
    asked = [t["content"] for t in history if t.get("role") == "user" and t.get("content")]
    if not asked or not needs_context(question):
        return None
    own = set(content_words(question))
    terms: list[str] = []
    # Walk back while the earlier questions were follow-ups themselves.
    for earlier in reversed(asked[-3:]):
        terms = [w for w in content_words(earlier) if w not in own and w not in terms] + terms
        if not needs_context(earlier):
            break
    if not terms:
        return None
    return f"{question.strip()} ({' '.join(terms)})"


def llm_rewrite(engine: Engine, question: str, history: Sequence[Message]) -> str | None:
    """The answer model's standalone version of the question, or None when it stands alone."""
    if not any(t.get("role") == "user" for t in history) or not needs_context(question):
        return None
    lines = [f"{t['role'].capitalize()}: {t['content'].strip()}" for t in history[-4:]]
    prompt = "Conversation:\n" + "\n".join(lines) + f"\n\nLast question: {question.strip()}"
    ids = engine.encode_chat(
        [{"role": "system", "content": REWRITE_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    )

    text = ""
    for item in engine.stream(ids, max_tokens=32, context_tokens=len(ids) + 32):
        if isinstance(item, Generation):
            text = item.text.strip()
    return text.splitlines()[0].strip() if text else None

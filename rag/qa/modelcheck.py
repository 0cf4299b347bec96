"""The answer model's say where retrieval's "not found" rule is unsure.

The rule (rag.qa.retrieval.is_relevant) refuses when no passage's evidence reaches
`retrieval.min_score`. A question phrased without its answer's words scores low although
the answer is there: on the GNU Coding Standards, whose questions are paraphrased away from
the manual's words, the rule refused 8 of 50 answerable ones. Between
`retrieval.model_check_min_score` and `min_score` the answer model reads the sources the
answer would get and is asked whether they contain the answer; logit(Yes) - logit(No) of
its first token of reply decides (no decoding).

The question is appended to the answer's own prompt, so the two share their long start
(system prompt and sources): on llama.cpp the answer that follows a "Yes" reuses that
prefill and the check costs a few tokens; a "No" costs the one prefill (12-25 s for 500-
1,000 tokens with Qwen2.5-Coder-1.5B on this project's 2-core test machine). MLX scores
without its prefix cache, so there a checked question pays one more prefill of its prompt.

Measured with that model on every question the rule refuses, in each eval set of
bench/retrieval.py (refused unanswerable / refused answerable, the rule alone -> with the
check at 0.35 and 1.0):

    Debian FAQ        12/12, 0/202  ->  12/12, 0/202
    samples           7/8,   0/20   ->  7/8,   0/20
    FOLDOC            9/10, 10/300  ->  9/10,  3/300
    GNU (paraphrase)  1/10,  8/50   ->  1/10,  4/50

Unanswerable questions in that band scored -2 to +0.54 (the FAQ's "How do I set up a
printer with CUPS?"), but for FOLDOC's "What is the capital of Australia?" at +0.82 (its
passages mention Australia); the FOLDOC questions the check saves ("What does MRS stand
for?") +2.5 to +3.8, the GNU ones +1.0 to +1.6. The threshold was first set to 0.75 on the
FAQ, samples and GNU (it saved 7 of GNU's 8); FOLDOC, held out until then, showed the
capital question would pass it, so it is 1.0, and FOLDOC no longer counts as held out
for it. The check does not lift the refusal of unanswerable questions:
asked the same way of every GNU question, unanswerable ones score like the answerable
(AUC 0.65), so it only ever turns the rule's "not found" into an answer.

Only where the engine gives logits (`info.can_score`): a generation server gives none, and
there the rule alone decides.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.config import RetrievalSettings
from rag.llm.base import Engine
from rag.qa.prompts import Message
from rag.qa.rerank import yes_logit
from rag.qa.retrieval import evidence
from rag.records import Passage

CHECK_QUESTION = "Do the sources above contain the answer to this question? Reply Yes or No."


def needs_model_check(
    passages: Sequence[Passage], query: str, settings: RetrievalSettings, engine: Engine
) -> bool:
    """Whether the rule's refusal of `passages` is close enough to ask the model (the rule
    refused them: no evidence reaches min_score)."""
    if not engine.info.can_score or settings.model_check_min_score >= settings.min_score:
        return False
    best = max((evidence(p, query, settings.word_weight) for p in passages), default=-1.0)
    return best >= settings.model_check_min_score


def sources_answer_logit(engine: Engine, messages: Sequence[Message]) -> float:
    """How strongly the model says the sources of the grounded prompt `messages` contain
    the answer to its question: logit(Yes) - logit(No), the higher the surer."""
    last = messages[-1]
    asked = [*messages[:-1], {**last, "content": f"{last['content']}\n\n{CHECK_QUESTION}"}]
    return yes_logit(engine, asked)

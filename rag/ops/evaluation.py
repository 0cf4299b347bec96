"""`rag eval`: how well retrieval (and optionally the answers) do on a set of questions.

A question file is JSON lines: {"question", "answer"?, "source"?, "page"?, "history"?}.
A passage is a hit when it matches every target the line gives: its source (the stored
source ends with the given path), its page, and the answer text (at least 80% of the
answer's words, all of them for answers of three words or fewer). A line with neither
answer nor source is unanswerable: the right outcome is "not found". `history` is a list
of earlier user questions, for follow-up questions.

Metrics: hit@1, hit@5 and MRR@10 of retrieval over answerable questions; citation precision
(the share of [n] markers whose passage contains the answer; needs generation); answer
accuracy (the share of answerable lines whose generated answer contains the line's `answer`,
compared without case, punctuation or spacing; needs generation); answer support (the share
of answer sentences that their cited passages support, and the share of answers with an
unsupported sentence, as rag.qa.support checks them; needs generation); the "not found"
operating point: the share of unanswerable questions refused against the share of answerable
ones refused, for retrieval's rule alone (rag.qa.retrieval.is_relevant, no LLM) and, with
generation, for the whole pipeline (that rule, the model's check where it is unsure, then the
model saying the answer is not in the sources); search latency p50/p95. With generation, a
follow-up's earlier questions are answered first and their answers are the history the
follow-up is asked with, as in a real conversation.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import UsageError
from rag.qa.prompts import Message
from rag.qa.support import NUMBER_WORDS, support_rates
from rag.records import Answer, CheckedSentence, Passage

# Ranks looked at: hit@5 needs five, MRR is computed over ten.
DEPTH = 10
_WORD = re.compile(r"\w+")
# What an answer says when the model itself finds no answer in the sources.
_SAYS_NOT_FOUND = re.compile(
    r"not found in your documents|(do|does) not (contain|mention|say|include)|"
    r"no information|not (mentioned|specified|stated)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class EvalQuestion:
    question: str
    answer: str | None = None
    source: str | None = None
    page: int | None = None
    history: tuple[str, ...] = ()

    @property
    def answerable(self) -> bool:
        return self.answer is not None or self.source is not None

    def turns(self, answers: Sequence[str] = ()) -> list[Message]:
        """The history as chat turns; `answers` are the earlier answers, "" where unknown."""
        turns: list[Message] = []
        for n, asked in enumerate(self.history):
            answered = answers[n] if n < len(answers) else ""
            turns += [
                {"role": "user", "content": asked},
                {"role": "assistant", "content": answered},
            ]
        return turns


@dataclass
class QuestionResult:
    question: EvalQuestion
    rank: int | None  # 1-based rank of the first hit within DEPTH, None when missed
    # Retrieval's rule said "not found" (before the model's check: rag.qa.modelcheck).
    retrieval_refused: bool
    search_ms: float
    rewritten_query: str | None = None
    cited_hits: int = 0
    cited: int = 0
    answer_s: float | None = None
    # The generated answer holds the expected one (None: not generated, or no `answer`).
    answer_correct: bool | None = None
    answer_text: str | None = None
    # The generated answer's sentences, checked against their sources (None: not generated).
    sentences: list[CheckedSentence] | None = None
    # The generated answer says the sources do not hold it.
    answer_refused: bool = False

    @property
    def refused(self) -> bool:
        """The outcome is "not found": the answer says so when one was asked for (the whole
        pipeline, whose model check may answer what the rule refuses), else the rule."""
        return self.answer_refused if self.answer_text is not None else self.retrieval_refused


@dataclass
class EvalReport:
    results: list[QuestionResult] = field(default_factory=list)
    # Every question was also put to the whole pipeline (`rag eval --generate`).
    generated: bool = False

    def to_json(self) -> dict[str, Any]:
        answerable = [r for r in self.results if r.question.answerable]
        unanswerable = [r for r in self.results if not r.question.answerable]
        ranks = [r.rank for r in answerable]
        cited = sum(r.cited for r in answerable)
        answered = [r.answer_s for r in self.results if r.answer_s is not None]
        # A refused answerable line counts as a wrong answer.
        graded = [r for r in answerable if r.question.answer is not None]
        correct = [bool(r.answer_correct) for r in graded]
        checked = [r for r in self.results if r.sentences is not None]
        support = support_rates([r.sentences or [] for r in checked])
        return {
            "questions": len(self.results),
            "generated": self.generated,
            "answerable": len(answerable),
            "unanswerable": len(unanswerable),
            "hit_at_1": _share(ranks, lambda rank: rank == 1),
            "hit_at_5": _share(ranks, lambda rank: rank is not None and rank <= 5),
            "mrr": round(sum(1 / r for r in ranks if r) / len(ranks), 4) if ranks else None,
            "citation_precision": (
                round(sum(r.cited_hits for r in answerable) / cited, 4) if cited else None
            ),
            "cited_markers": cited if self.generated else None,
            "answer_accuracy": _share(correct, bool) if self.generated else None,
            "supported_sentences": _rounded(support["supported_sentences"]),
            "answers_with_unsupported": _rounded(support["answers_with_unsupported"]),
            # The "not found" operating point of retrieval's rule, and with generation of the
            # whole pipeline (None without): unanswerable questions refused (higher is
            # better) against answerable ones refused (lower is better).
            "refused_unanswerable": _share([r.retrieval_refused for r in unanswerable], bool),
            "refused_answerable": _share([r.retrieval_refused for r in answerable], bool),
            "pipeline_refused_unanswerable": (
                _share([r.refused for r in unanswerable], bool) if self.generated else None
            ),
            "pipeline_refused_answerable": (
                _share([r.refused for r in answerable], bool) if self.generated else None
            ),
            "search_ms": _percentiles([r.search_ms for r in self.results]),
            "answer_s": _percentiles(answered) if answered else None,
            "missed_at_5": [
                r.question.question for r in answerable if r.rank is None or r.rank > 5
            ],
            "wrong_answers": [
                {
                    "question": r.question.question,
                    "expected": r.question.answer,
                    "answer": r.answer_text,
                }
                for r in graded
                if answered and not r.answer_correct
            ],
            "unsupported_sentences": [
                {"question": r.question.question, "sentence": s.text}
                for r in checked
                for s in r.sentences or []
                if not s.supported
            ],
        }


def load_questions(path: Path) -> list[EvalQuestion]:
    """Parse a question file; a bad line is a UsageError naming the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict) or not str(raw.get("question") or "").strip():
                raise ValueError("needs a non-empty 'question'")
            page = raw.get("page")
            history = raw.get("history") or []
            if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
                raise ValueError("'history' must be a list of earlier questions")
            questions.append(
                EvalQuestion(
                    question=str(raw["question"]),
                    answer=None if raw.get("answer") is None else str(raw["answer"]),
                    source=None if raw.get("source") is None else str(raw["source"]),
                    page=None if page is None else int(page),
                    history=tuple(history),
                )
            )
        except (ValueError, TypeError) as e:
            raise UsageError(f"{path}, line {number}: {e}") from e
    if not questions:
        raise UsageError(f"{path} holds no questions")
    return questions


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def contains_answer(text: str, answer: str) -> bool:
    """Whether `text` holds the answer: 80% of its words (all, for three words or fewer)."""
    wanted = set(words(answer))
    if not wanted:
        return False
    found = len(wanted & set(words(text)))
    return found == len(wanted) if len(wanted) <= 3 else found >= 0.8 * len(wanted)


_NUMBER_WORDS = {word: str(n) for n, word in enumerate(NUMBER_WORDS)}


def normalized(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces, small numbers as digits: how
    answers are compared ("Three days" states "3 days")."""
    found = _WORD.findall(text.lower().replace("_", " "))
    return " ".join(_NUMBER_WORDS.get(word, word) for word in found)


def answers_with(generated: str, expected: str) -> bool:
    """Whether the generated answer states the expected one (see `normalized`)."""
    wanted = normalized(expected)
    return bool(wanted) and f" {wanted} " in f" {normalized(generated)} "


def same_source(stored: str, wanted: str) -> bool:
    stored, wanted = stored.replace("\\", "/"), wanted.replace("\\", "/").lstrip("./")
    return stored == wanted or stored.endswith("/" + wanted)


def is_hit(question: EvalQuestion, passage: Passage) -> bool:
    if question.source is not None and not same_source(passage.source, question.source):
        return False
    if question.page is not None and passage.page != question.page:
        return False
    return question.answer is None or contains_answer(passage.text, question.answer)


def first_hit(question: EvalQuestion, passages: Sequence[Passage]) -> int | None:
    return next((n for n, p in enumerate(passages[:DEPTH], 1) if is_hit(question, p)), None)


def evaluate(
    questions: Sequence[EvalQuestion],
    search: Callable[[EvalQuestion], tuple[list[Passage], str | None]],
    is_refused: Callable[[str, list[Passage]], bool],
    answer: Callable[[EvalQuestion], Answer] | None = None,
) -> EvalReport:
    """Run every question: `search` gives (ranked passages, rewritten query or None);
    `is_refused(query searched, passages)` says whether retrieval's rule makes the answer
    "not found"; `answer`, when given, runs the whole pipeline on every question (where the
    rule is unsure the model may still answer one it refuses: rag.qa.modelcheck)."""
    report = EvalReport(generated=answer is not None)
    for q in questions:
        started = time.perf_counter()
        passages, rewritten = search(q)
        search_ms = (time.perf_counter() - started) * 1000
        result = QuestionResult(
            q,
            first_hit(q, passages),
            is_refused(rewritten or q.question, passages),
            search_ms,
            rewritten,
        )
        if answer is not None:
            started = time.perf_counter()
            reply = answer(q)
            if not reply.not_found:  # the time of generated answers
                result.answer_s = time.perf_counter() - started
            result.answer_refused = reply.not_found or bool(_SAYS_NOT_FOUND.search(reply.answer))
            result.answer_text = reply.answer
            result.sentences = reply.sentences
            cited = [c for c in reply.citations if c.cited]
            result.cited = len(cited)
            if q.answer is not None:
                result.cited_hits = sum(contains_answer(c.text, q.answer) for c in cited)
                result.answer_correct = not result.refused and answers_with(reply.answer, q.answer)
        report.results.append(result)
    return report


def render_report(report: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"{report['questions']} questions ({report['answerable']} answerable, "
        f"{report['unanswerable']} unanswerable)",
        f"retrieval   hit@1 {pct(report['hit_at_1'])}  hit@5 {pct(report['hit_at_5'])}  "
        f"MRR {report['mrr'] if report['mrr'] is not None else 'n/a'}",
        f"citations   precision {pct(report['citation_precision'])}"
        + ("" if report["answer_s"] else "  (run with --generate to measure)"),
        f"answers     accuracy {pct(report['answer_accuracy'])}",
        f"support     sentences supported {pct(report['supported_sentences'])}  "
        f"answers with an unsupported claim {pct(report['answers_with_unsupported'])}",
        f"not found   retrieval refused {pct(report['refused_unanswerable'])} of unanswerable, "
        f"{pct(report['refused_answerable'])} of answerable"
        + (
            f"  (min_score {report['min_score']}, word_weight {report['word_weight']})"
            if "min_score" in report
            else ""
        ),
        (
            f"            with the answers refused {pct(report['pipeline_refused_unanswerable'])} "
            f"of unanswerable, {pct(report['pipeline_refused_answerable'])} of answerable"
            if report["generated"]
            else "            (run with --generate for the whole pipeline's refusals)"
        ),
        f"latency     search p50 {report['search_ms']['p50']:.1f} ms  "
        f"p95 {report['search_ms']['p95']:.1f} ms",
    ]
    if report["answer_s"]:
        lines.append(
            f"            answer p50 {report['answer_s']['p50']:.1f} s  "
            f"p95 {report['answer_s']['p95']:.1f} s"
        )
    lines += [f"  missed at 5: {q}" for q in report["missed_at_5"]]
    lines += [
        f"  wrong answer: {w['question']} (expected {w['expected']!r}): {w['answer']!r}"
        for w in report["wrong_answers"]
    ]
    lines += [
        f"  unsupported: {u['question']}: {u['sentence']!r}"
        for u in report["unsupported_sentences"]
    ]
    return "\n".join(lines)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _share(values: Sequence[Any], test: Callable[[Any], bool]) -> float | None:
    return round(sum(1 for v in values if test(v)) / len(values), 4) if values else None


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p95": 0.0}

    def at(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"p50": at(0.5), "p95": at(0.95)}

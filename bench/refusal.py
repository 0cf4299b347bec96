"""The "not found" rule, studied: which evidence tells unanswerable questions from answerable.

    python bench/refusal.py [--sets debian-faq,samples,foldoc,gnu-standards] [--llm N]
                            [--generate N] [--model NAME] [--index-cache DIR | --fresh]

The target (issue 15): refuse at least 85% of the unanswerable questions of a set while
refusing at most 5% of its answerable ones. On the eval sets of bench/retrieval.py (the same
cached indexes), each question is searched as `rag ask` searches it, and each signal below
is computed from the top `retrieval.k` passages the answer would be given:

- evidence: the rule's own (rag.qa.retrieval.evidence: cosine + word_weight x word share);
- cosine and word share (of the question's content words) of the best passage;
- the answer-bearing sentence: the single sentence of those passages closest to the
  question (embedded with the index's model), its cosine and its word share;
- agreement: whether the top passage is in the top 5 of both legs, vector and BM25;
- the best BM25 score, and the vector leg's cosine gap (best - 6th) and z-score (best
  against the 6th to 50th), which say how far the best hit stands out.

For each: AUC (the chance that an answerable question scores above an unanswerable one;
0.5 is chance) and "at 85%": the least share of answerable questions any threshold on it
refuses while refusing at least 85% of the unanswerable ones (the target needs <= 5%).
Then a logistic regression on all of them, fitted on the sets the settings were chosen on
(Debian FAQ, samples, GNU; each set and class weighed alike) and checked on FOLDOC, held
out; and the rule as configured (min_score, word_weight).

--llm N: the answer model reads the passages: its yes/no judgement of each of the top 3
(rag.qa.rerank.relevance_logit, logit(Yes) - logit(No), the best of the three) and of the
answer's own prompt (rag.qa.modelcheck.sources_answer_logit), on every unanswerable question
and N answerable ones per set, with seconds per question; then the operating point of the
rule followed by the model check, on every question the rule refuses.
--generate N: `rag eval --generate` on every unanswerable question and N answerable ones
per set (evenly spread): the whole pipeline's operating point (the rule, the model check
where it is unsure, and the model saying the answer is not in its sources) beside the
rule's alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.build_debian_faq_eval import DEFAULT_CACHE  # noqa: E402
from bench.retrieval import (  # noqa: E402
    SETS,
    TUNED_ON,
    EvalSet,
    Legs,
    held,
    legs,
    load_sets,
    refit,
)
from rag.config import EmbeddingSettings, LlmSettings, RetrievalSettings  # noqa: E402
from rag.embed.embedder import Embedder, load_embedder  # noqa: E402
from rag.qa.retrieval import evidence, is_relevant, text_coverage, word_coverage  # noqa: E402
from rag.records import Passage  # noqa: E402

# The operating point asked for: this share of unanswerable questions refused ...
REFUSE_UNANSWERABLE = 0.85
# ... with at most this share of answerable ones refused.
MAX_REFUSED_ANSWERABLE = 0.05
# The model the planner picks on a 2-core CPU, named so that `auto` cannot pick another.
DEFAULT_MODEL = "qwen2.5-coder-1.5b"
SIGNALS = (
    "evidence",
    "cosine",
    "word share",
    "sentence cosine",
    "sentence words",
    "agreement",
    "bm25",
    "cosine gap",
    "z-score",
)
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n\s*\n")


@dataclasses.dataclass
class Row:
    answerable: bool
    signals: dict[str, float]
    relevant: bool  # the rule as configured keeps the passages


def sentences(text: str) -> list[str]:
    """The text's sentences; pieces under 40 characters join the next one.

    Not rag.qa.support.split_sentences: that one keeps list items and short lines apart (a
    span must point at the words), while a candidate answer sentence needs enough words to
    embed, so this one also cuts at ; and : and joins fragments."""
    out: list[str] = []
    for piece in (p.strip() for p in _SENTENCE_END.split(text)):
        if not piece:
            continue
        if out and len(out[-1]) < 40:
            out[-1] += " " + piece
        else:
            out.append(piece)
    return out or [text]


def signals_of(rows: list[Legs], embedder: Embedder, settings: RetrievalSettings) -> list[Row]:
    """Every question's signals from the top k passages, as the answer would get them."""
    tops = [refit(r, settings, settings.k) for r in rows]
    said = [[s for p in top for s in sentences(p.text)] for top in tops]
    flat = [s for group in said for s in group]
    vectors = embedder.embed_documents(flat) if flat else np.zeros((0, embedder.dim))
    out, at = [], 0
    for r, top, group in zip(rows, tops, said, strict=True):
        query_vector = embedder.embed_query(r.query)
        cosines = vectors[at : at + len(group)] @ query_vector
        at += len(group)
        best = int(np.argmax(cosines)) if len(group) else 0
        by_vector = [p.score for p in r.by_vector[:50]]
        rest = np.asarray(by_vector[5:]) if len(by_vector) > 6 else np.zeros(2)
        first = (top[0].chunk_ids or (top[0].chunk_id,)) if top else ()
        agree = any(c in {p.chunk_id for p in r.by_vector[:5]} for c in first) and any(
            c in {p.chunk_id for p, _ in r.by_text[:5]} for c in first
        )
        s = {
            "evidence": max((evidence(p, r.query, settings.word_weight) for p in top), default=0),
            "cosine": max((p.score for p in top), default=0.0),
            "word share": max((word_coverage(p, r.query) for p in top), default=0.0),
            "sentence cosine": float(cosines[best]) if len(group) else 0.0,
            "sentence words": text_coverage(group[best], r.query) if group else 0.0,
            "agreement": float(agree),
            "bm25": max((score for _, score in r.by_text[:1]), default=0.0),
            "cosine gap": by_vector[0] - by_vector[5] if len(by_vector) > 5 else 0.0,
            "z-score": (by_vector[0] - rest.mean()) / (rest.std() + 1e-6) if by_vector else 0,
        }
        relevant = is_relevant(top, settings.min_score, r.query, settings.word_weight)
        out.append(Row(r.question.answerable, {k: float(v) for k, v in s.items()}, relevant))
    return out


def auc(answerable: list[float], unanswerable: list[float]) -> float:
    """The chance that an answerable question scores above an unanswerable one."""
    if not answerable or not unanswerable:
        return math.nan
    a, u = np.asarray(answerable)[:, None], np.asarray(unanswerable)[None, :]
    return float((a > u).mean() + 0.5 * (a == u).mean())


def refused_at_target(answerable: list[float], unanswerable: list[float]) -> float:
    """The share of answerable questions refused by the least threshold that refuses
    REFUSE_UNANSWERABLE of the unanswerable ones (a score at or below it is refused)."""
    if not answerable or not unanswerable:
        return math.nan
    ordered = sorted(unanswerable)
    threshold = ordered[math.ceil(REFUSE_UNANSWERABLE * len(ordered)) - 1]
    return sum(a <= threshold for a in answerable) / len(answerable)


def cell(answerable: list[float], unanswerable: list[float]) -> str:
    return (
        f"{auc(answerable, unanswerable):5.3f} "
        f"{100 * refused_at_target(answerable, unanswerable):5.1f}%"
    )


def print_signals(by_set: dict[str, list[Row]]) -> None:
    print(
        f"== Signals: AUC, and answerable refused when {100 * REFUSE_UNANSWERABLE:.0f}% of "
        f"unanswerable are (target <= {100 * MAX_REFUSED_ANSWERABLE:.0f}%)"
    )
    counts = ", ".join(
        f"{held(name)}: {sum(not r.answerable for r in rows)} unanswerable, "
        f"{sum(r.answerable for r in rows)} answerable"
        for name, rows in by_set.items()
    )
    print(f"  ({counts})")
    print(f"  {'':16}" + "".join(f"{name:>20}" for name in by_set))
    for signal in SIGNALS:
        line = f"  {signal:16}"
        for rows in by_set.values():
            yes = [r.signals[signal] for r in rows if r.answerable]
            no = [r.signals[signal] for r in rows if not r.answerable]
            line += f"{cell(yes, no):>20}"
        print(line)


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float) -> np.ndarray:
    """Weighted, L2-penalised logistic regression by Newton's method; the last coefficient
    is the intercept (not penalised)."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(x1.shape[1])
    penalty = np.eye(x1.shape[1]) * l2
    penalty[-1, -1] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x1 @ beta)))
        gradient = x1.T @ (weight * (p - y)) + penalty @ beta
        hessian = x1.T @ (x1 * (weight * p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def class_weights(rows: list[Row]) -> np.ndarray:
    count = {a: sum(r.answerable == a for r in rows) for a in (True, False)}
    return np.array([0.5 / count[r.answerable] for r in rows])


def print_combined(by_set: dict[str, list[Row]], tuned_on: list[str]) -> None:
    if not tuned_on:
        return

    def matrix(rows: list[Row]) -> np.ndarray:
        return np.array([[r.signals[s] for s in SIGNALS] for r in rows])

    x = np.vstack([matrix(by_set[n]) for n in tuned_on])
    mean, spread = x.mean(0), x.std(0) + 1e-9
    y = np.concatenate([[r.answerable for r in by_set[n]] for n in tuned_on]).astype(float)
    # Each set, and within it each class, weighs alike, whatever its size.
    weight = np.concatenate([class_weights(by_set[n]) for n in tuned_on])
    beta = fit_logistic((x - mean) / spread, y, weight, l2=0.1)
    print(f"== Logistic regression on every signal, fitted on {', '.join(tuned_on)}")
    print(
        "  coefficients (standardised): "
        + ", ".join(f"{s} {b:+.2f}" for s, b in zip(SIGNALS, beta, strict=False))
    )
    line = "  AUC, refused at the target:"
    for name, rows in by_set.items():
        score = ((matrix(rows) - mean) / spread) @ beta[:-1] + beta[-1]
        yes = [float(v) for v, r in zip(score, rows, strict=True) if r.answerable]
        no = [float(v) for v, r in zip(score, rows, strict=True) if not r.answerable]
        line += f"  {held(name)} {cell(yes, no)}"
    print(line)


def print_rule(by_set: dict[str, list[Row]], settings: RetrievalSettings) -> None:
    print(
        f"== The rule as configured (min_score {settings.min_score}, word_weight "
        f"{settings.word_weight}): unanswerable refused / answerable refused"
    )
    for name, rows in by_set.items():
        no = [not r.relevant for r in rows if not r.answerable]
        yes = [not r.relevant for r in rows if r.answerable]
        print(
            f"  {held(name)}: {100 * statistics.mean(no):.1f}% of {len(no)} / "
            f"{100 * statistics.mean(yes):.1f}% of {len(yes)}"
        )


def chosen(es: EvalSet, n: int) -> list[int]:
    """Indexes of every unanswerable question and n answerable ones spread over the set."""
    answerable = [i for i, q in enumerate(es.questions) if q.answerable]
    step = max(1, len(answerable) // max(1, n))
    picked = set(answerable[::step][:n])
    return [i for i, q in enumerate(es.questions) if not q.answerable or i in picked]


def judge(sets: list[EvalSet], cached: dict[str, list[Legs]], n: int, model: str) -> None:
    """The answer model reading the passages, two ways, on every unanswerable question and n
    answerable ones per set; then the model check (rag.qa.modelcheck) on every question the
    rule refuses, as the answerer runs it."""
    from rag.llm.load import load_engine
    from rag.qa.modelcheck import needs_model_check, sources_answer_logit
    from rag.qa.packing import merge_adjacent, pack
    from rag.qa.rerank import relevance_logit

    settings, llm = RetrievalSettings(), LlmSettings(model=model)
    engine = load_engine(llm)
    budget = llm.context_tokens - llm.answer_tokens

    def check(query: str, top: list[Passage]) -> float:
        packed = pack(engine.encode_chat, query, merge_adjacent(top), [], budget)
        return sources_answer_logit(engine, packed.messages)

    print(
        f"== The model's yes/no ({engine.name}): AUC, refused at the target, of the best of "
        "the top 3 passages judged alone, and of the answer's prompt asked whether its "
        "sources hold the answer (the model check)"
    )
    for es in sets:
        alone: tuple[list[float], list[float]] = ([], [])
        prompt: tuple[list[float], list[float]] = ([], [])
        seconds = []
        for i in chosen(es, n):
            row = cached[es.name][i]
            started = time.perf_counter()
            top = refit(row, settings, settings.k)
            side = 0 if row.question.answerable else 1
            alone[side].append(max(relevance_logit(engine, row.query, p) for p in top[:3]))
            prompt[side].append(check(row.query, top))
            seconds.append(time.perf_counter() - started)
        print(
            f"  {held(es.name)}: alone {cell(*alone)}, the answer's prompt {cell(*prompt)} "
            f"({len(alone[1])} unanswerable, {len(alone[0])} answerable; "
            f"{statistics.median(seconds):.1f} s per question for both)"
        )
    print(
        f"== The rule, then the model check (answer when evidence >= "
        f"{settings.model_check_min_score} and the check >= {settings.model_check_logit}): "
        "unanswerable refused / answerable refused"
    )
    for es in sets:
        refused = {True: 0, False: 0}
        count = {True: 0, False: 0}
        for row in cached[es.name]:
            answerable = row.question.answerable
            count[answerable] += 1
            top = refit(row, settings, settings.k)
            if is_relevant(top, settings.min_score, row.query, settings.word_weight):
                continue
            # As the answerer decides (rag.qa.answerer.Answerer.stream).
            saved = needs_model_check(top, row.query, settings, engine) and (
                check(row.query, top) >= settings.model_check_logit
            )
            refused[answerable] += not saved
        print(
            f"  {held(es.name)}: {refused[False]} of {count[False]} / {refused[True]} of "
            f"{count[True]}"
        )


def generate(sets: list[EvalSet], n: int, model: str) -> None:
    print(f"== `rag eval --generate` ({model}): unanswerable refused / answerable refused")
    for es in sets:
        lines = [ln for ln in es.questions_path.read_text().splitlines() if ln.strip()]
        picked = [lines[i] for i in chosen(es, n)]
        with tempfile.TemporaryDirectory() as tmp:
            questions = Path(tmp) / f"{es.name}.jsonl"
            questions.write_text("\n".join(picked) + "\n")
            env = {
                **os.environ,
                "RAG_STORAGE_DATA_DIR": str(es.data_dir),
                "RAG_LLM_MODEL": model,
                "PYTHONPATH": str(ROOT),
            }
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rag",
                    "eval",
                    str(questions),
                    "--collection",
                    es.collection,
                    "--generate",
                    "--json",
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
        if done.returncode != 0:
            print(f"  {es.name}: rag eval failed: {done.stderr.strip()[-500:]}")
            continue
        report: dict[str, Any] = json.loads(done.stdout)
        out = DEFAULT_CACHE / f"refusal-{es.name}.json"
        out.write_text(json.dumps(report, indent=1))
        print(
            f"  {held(es.name)} ({report['unanswerable']} unanswerable, {report['answerable']} "
            f"answerable): retrieval's rule {100 * report['refused_unanswerable']:.1f}% / "
            f"{100 * report['refused_answerable']:.1f}%, with the answers "
            f"{100 * report['pipeline_refused_unanswerable']:.1f}% / "
            f"{100 * report['pipeline_refused_answerable']:.1f}%; answer accuracy "
            f"{100 * (report['answer_accuracy'] or 0):.1f}%, answer p50 "
            f"{report['answer_s']['p50'] if report['answer_s'] else 0:.1f} s (report: {out})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help="eval sets, comma-separated")
    parser.add_argument("--llm", type=int, default=0, metavar="N")
    parser.add_argument("--generate", type=int, default=0, metavar="N")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="llm.model for --llm/--generate")
    parser.add_argument("--index-cache", type=Path, default=DEFAULT_CACHE / "indexes")
    parser.add_argument("--fresh", action="store_true", help="ingest into a temporary dir")
    args = parser.parse_args()
    os.chdir(ROOT)  # sample sources are named samples/... as users see them
    wanted = [name.strip() for name in args.sets.split(",") if name.strip()]
    if not wanted or set(wanted) - set(SETS):
        parser.error(f"--sets takes some of {', '.join(SETS)}")
    settings = RetrievalSettings()
    embedder = load_embedder(EmbeddingSettings())
    with tempfile.TemporaryDirectory() as tmp:
        sets = load_sets(wanted, None if args.fresh else args.index_cache, Path(tmp), embedder)
        cached = {es.name: legs(es, embedder) for es in sets}
        by_set = {name: signals_of(rows, embedder, settings) for name, rows in cached.items()}
        print_signals(by_set)
        print_combined(by_set, [n for n in by_set if n in TUNED_ON])
        print_rule(by_set, settings)
        if args.llm:
            judge(sets, cached, args.llm, args.model)
        if args.generate:
            generate(sets, args.generate, args.model)


if __name__ == "__main__":
    main()

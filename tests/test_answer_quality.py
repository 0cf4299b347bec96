"""Right answers from the default model: `rag eval --generate` on a slice of the samples.

The whole sample set (`rag eval samples/questions.jsonl --generate`) takes minutes on a
2-core CPU; this slice keeps the README's example, a follow-up asked after its earlier
question was answered, and questions the documents do not answer. It runs the model the
planner picks on a 2-core CPU (Qwen2.5-Coder-1.5B, on llama.cpp where no GPU is), named
outright so that a busy test machine cannot make `auto` pick another.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgspec
import pytest

from rag.config import Settings, replace
from rag.ops.evaluation import answers_with
from rag.qa.answerer import load_answerer
from rag.qa.retrieval import is_relevant
from tests.conftest import RAG, ROOT, rag_env

DEFAULT_MODEL = "qwen2.5-coder-1.5b"
SLICE = (
    "Which command promotes the standby database during a failover?",
    "What should I check before running it?",
    "How quickly must the on-call engineer acknowledge a page?",
    "What is the name of the company wiki?",
    "What is the password for the guest Wi-Fi network?",
    "How do I bake a chocolate cake?",
)


@pytest.mark.slow
def test_the_default_model_answers_the_samples_and_refuses_what_they_do_not_say(
    sample_data_dir: Path, tmp_path: Path
) -> None:
    lines = (ROOT / "samples" / "questions.jsonl").read_text().splitlines()
    chosen = [line for line in lines if json.loads(line)["question"] in SLICE]
    assert len(chosen) == len(SLICE)
    questions = tmp_path / "slice.jsonl"
    questions.write_text("\n".join(chosen) + "\n")
    done = subprocess.run(
        [str(RAG), "eval", str(questions), "--generate", "--json"],
        cwd=ROOT,
        env=rag_env(sample_data_dir, RAG_LLM_MODEL=DEFAULT_MODEL),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["answerable"] == 4 and report["unanswerable"] == 2
    # Answers state the expected fact (`harbor-db promote`), not a marker in its place; one
    # slip of four is allowed, since greedy decoding can differ across CPUs' kernels.
    wrong = {w["question"] for w in report["wrong_answers"]}
    assert SLICE[0] not in wrong, report["wrong_answers"]
    assert report["answer_accuracy"] >= 0.75, report["wrong_answers"]
    assert report["pipeline_refused_unanswerable"] == 1.0
    assert report["citation_precision"] is not None and report["citation_precision"] >= 0.75


@pytest.mark.slow
def test_where_the_rule_is_unsure_the_default_model_decides(sample_data_dir: Path) -> None:
    """rag.qa.modelcheck: with min_score out of reach, the rule refuses both questions; the
    model's check answers the one the sources hold and refuses the one they do not."""
    held = "How quickly must the on-call engineer acknowledge a page?"
    not_held = "How do I bake a chocolate cake?"
    settings = replace(Settings(), "storage", data_dir=sample_data_dir)
    settings = replace(settings, "llm", model=DEFAULT_MODEL)
    settings = replace(settings, "retrieval", min_score=1.4, model_check_min_score=-1.0)
    answerer = load_answerer(settings)
    r = answerer.retrieval
    for question in (held, not_held):
        passages = answerer.search(question, "default", r.k)
        assert not is_relevant(passages, r.min_score, question, r.word_weight), question

    answered = answerer.ask(held, "default", r.k)
    assert not answered.not_found and answers_with(answered.answer, "15 minutes")
    assert answerer.ask(not_held, "default", r.k).not_found

    # Without the check (model_check_min_score = min_score) the rule alone decides.
    answerer.retrieval = msgspec.structs.replace(r, model_check_min_score=r.min_score)
    assert answerer.ask(held, "default", r.k).not_found

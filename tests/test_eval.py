"""`rag eval` on the project's own question set, held to the recorded baseline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import RAG, ROOT, rag_env

BASELINE = ROOT / "samples" / "questions.baseline.json"
# Embedding numerics differ slightly across machines; rank-based scores may move this much.
MRR_SLACK = 0.02


def _eval(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAG), "eval", *args],
        cwd=ROOT,
        env=rag_env(data_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_eval_on_the_samples_does_not_drop_below_the_baseline(sample_data_dir: Path) -> None:
    done = _eval(sample_data_dir, "samples/questions.jsonl", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    baseline = json.loads(BASELINE.read_text())
    assert report["mode"] == "hybrid" and report["answerable"] >= 20
    assert report["hit_at_5"] >= baseline["hit_at_5"], report["missed_at_5"]
    assert report["hit_at_1"] >= baseline["hit_at_1"]
    assert report["mrr"] >= baseline["mrr"] - MRR_SLACK
    assert report["not_found_accuracy"] >= baseline["not_found_accuracy"]
    assert report["false_not_found"] <= baseline["false_not_found"]
    assert report["search_ms"]["p50"] > 0 and report["citation_precision"] is None


def test_eval_names_the_bad_line_of_a_question_file(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok?"}\n{"answer": "no question"}\n')
    done = _eval(tmp_path / "data", str(bad))
    assert done.returncode == 2
    assert "line 2: needs a non-empty 'question'" in done.stderr


def test_an_answer_is_right_when_it_states_the_expected_one() -> None:
    """Compared without case, punctuation or spacing."""
    from rag.ops.evaluation import answers_with

    assert answers_with("Run `harbor-db promote` on the standby [1].", "harbor-db promote")
    assert answers_with("Employees get 27 Days of paid vacation.", "27 days")
    assert answers_with("It opens at 07:30 [2].", "07:30")
    assert answers_with("Up to 3 days per week [1].", "three days per week")
    # A citation marker where the answer belongs, or a near miss, is wrong.
    assert not answers_with(
        "The command to promote the standby database is [1].", "harbor-db promote"
    )
    assert not answers_with("Employees get 270 days.", "27 days")
    assert not answers_with("anything", "")

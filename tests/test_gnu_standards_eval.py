"""bench/build_gnu_standards_eval.py on a small PDF written here: each answer on its page."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.build_gnu_standards_eval import PARAPHRASED, SOURCE, UNANSWERABLE, build_questions
from rag.ops.evaluation import EvalQuestion, is_hit
from rag.records import Passage
from tests.pdfwrite import write_pdf

PAGES = [
    "Formatting Your Source Code. Please keep the length of source lines to 79 characters "
    "or less, for maximum readability.",
    "Memory Usage. If a program typically uses just a few meg of memory, don't bother making "
    "any effort to reduce memory usage.",
]
QUESTIONS = [
    ("How wide may a line of C code be?", "79 characters or less", 1),
    ("Should I work to shrink a tool's RAM use?", "making any effort to reduce memory usage", 2),
]


def test_each_question_targets_the_page_holding_its_answer(tmp_path: Path) -> None:
    pdf = tmp_path / SOURCE
    write_pdf(pdf, PAGES)
    lines = build_questions(pdf, QUESTIONS, ["Who pays GNU maintainers?"])
    assert [(line.get("page"), line["kind"]) for line in lines] == [
        (1, "paraphrase"),
        (2, "paraphrase"),
        (None, "unanswerable"),
    ]
    # The eval judge finds the first question on page 1 of standards.pdf and nowhere else.
    q = EvalQuestion(str(lines[0]["question"]), str(lines[0]["answer"]), SOURCE, 1)
    on_page = Passage("c1", f"corpus/{SOURCE}", 1, "", PAGES[0], 0.5)
    assert is_hit(q, on_page)
    assert not is_hit(q, Passage("c2", f"corpus/{SOURCE}", 2, "", PAGES[0], 0.5))


def test_an_answer_missing_from_its_page_stops_the_build(tmp_path: Path) -> None:
    pdf = tmp_path / SOURCE
    write_pdf(pdf, PAGES)
    with pytest.raises(SystemExit, match="page 2 does not hold '79 characters or less'"):
        build_questions(pdf, [("How wide may a line be?", "79 characters or less", 2)], [])


def test_the_set_is_paraphrases_with_some_unanswerable_questions() -> None:
    assert len(PARAPHRASED) >= 40 and len(UNANSWERABLE) >= 10
    assert len({q for q, _, _ in PARAPHRASED}) == len(PARAPHRASED)

"""Answer sentences checked against the passages they cite (rag.qa.support)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ingest.pdf import parse_pdf_bytes
from rag.ops.evaluation import EvalQuestion, evaluate, render_report
from rag.qa.support import check_answer, key_tokens, split_sentences
from rag.records import Answer, Passage

from .conftest import FAST_LLM_ENV, RAG, ROOT, rag_env

RUNBOOK = "samples/incident-runbook.pdf"


@pytest.fixture(scope="module")
def runbook() -> dict[int, Passage]:
    """The runbook's pages as the PDF parser reads them, one passage per page."""
    parsed = parse_pdf_bytes((ROOT / RUNBOOK).read_bytes(), RUNBOOK)
    return {
        s.page: Passage(f"runbook-p{s.page}", RUNBOOK, s.page, "", s.text, 1.0)
        for s in parsed.sections
        if s.page is not None
    }


def test_an_invented_command_is_unsupported_despite_its_citation(
    runbook: dict[int, Passage],
) -> None:
    answer = 'The command "promote-server-backup" is used to promote the standby database [1].'
    [sentence] = check_answer(answer, [runbook[3]])
    assert sentence.text == answer
    assert sentence.citations == [1]
    assert not sentence.supported and sentence.span is None
    assert "promote-server-backup" in key_tokens(answer)


def test_the_right_command_is_supported_by_the_exact_step(runbook: dict[int, Passage]) -> None:
    page = runbook[3]
    [sentence] = check_answer("Run `harbor-db promote` on the standby [2].", [runbook[1], page])
    assert sentence.supported and sentence.citations == [2]
    # Marker [1] names the first passage, and page 1 holds no such command.
    [wrong] = check_answer("Run `harbor-db promote` on the standby [1].", [runbook[1], page])
    assert not wrong.supported
    span = sentence.span
    assert sentence.supported and span is not None
    assert (span.source, span.page, span.chunk_id) == (RUNBOOK, 3, "runbook-p3")
    assert page.text[span.start : span.end] == span.text
    assert span.text == (
        "4. To fail over the database, promote the standby with the command harbor-db promote."
    )


def test_a_number_the_source_does_not_hold_is_unsupported(runbook: dict[int, Passage]) -> None:
    wrong, right = check_answer(
        "The on-call engineer must acknowledge a page within 20 minutes [1]. "
        "The on-call engineer must acknowledge a page within 15 minutes [1].",
        [runbook[2]],
    )
    assert not wrong.supported and wrong.span is None
    assert right.supported and right.span is not None
    assert "within 15 minutes" in right.span.text


def test_a_sentence_without_markers_is_checked_against_what_the_answer_cites(
    runbook: dict[int, Passage],
) -> None:
    pages = [runbook[1], runbook[2], runbook[3]]
    # The answer cites page 3, so the unmarked sentence is held to page 3 alone.
    first, unmarked = check_answer(
        "Promote the standby with harbor-db promote [3]. Acknowledge a page within 15 minutes.",
        pages,
    )
    assert first.supported and unmarked.citations == []
    assert not unmarked.supported
    # An answer that cites nothing is held to every passage of the prompt.
    [alone] = check_answer("Acknowledge a page within 15 minutes.", pages)
    assert alone.supported and alone.span is not None and alone.span.page == 2


def test_sentences_keep_markers_after_the_stop_and_list_numbers_with_their_item() -> None:
    text = "First step. [1] Then this!\n\n2. Promote it [2].\nNo stop at the end"
    pieces = [text[s:e] for s, e in split_sentences(text)]
    assert pieces == ["First step. [1]", "Then this!", "2. Promote it [2].", "No stop at the end"]


def test_a_colon_does_not_cut_a_claim_in_two(runbook: dict[int, Passage]) -> None:
    [claim] = check_answer("The command is: `harbor-db promote` [1].", [runbook[3]])
    assert claim.supported and claim.span is not None
    assert "harbor-db promote" in claim.span.text


def test_a_sentence_with_no_claim_is_supported_without_a_span(
    runbook: dict[int, Passage],
) -> None:
    [sure] = check_answer("Sure.", [runbook[3]])
    assert sure.supported and sure.span is None


def test_eval_reports_the_support_shares(runbook: dict[int, Passage]) -> None:
    passages = [runbook[3]]
    replies = {
        "invented": 'The command "promote-server-backup" promotes the standby [1].',
        "right": "Promote the standby with the command harbor-db promote [1].",
    }

    def answer(q: EvalQuestion) -> Answer:
        text = replies[q.question]
        return Answer(text, sentences=check_answer(text, passages))

    questions = [EvalQuestion(q, answer="harbor-db promote", source=RUNBOOK) for q in replies]
    report = evaluate(questions, lambda q: (passages, None), lambda q, p: False, answer).to_json()
    assert report["supported_sentences"] == 0.5
    assert report["answers_with_unsupported"] == 0.5
    assert report["unsupported_sentences"] == [
        {"question": "invented", "sentence": replies["invented"]}
    ]
    assert "answers with an unsupported claim 50.0%" in render_report(report)


def test_ask_json_checks_every_sentence_of_the_answer(sample_data_dir: Path) -> None:
    done = subprocess.run(
        [str(RAG), "ask", "How quickly must the on-call engineer acknowledge a page?", "--json"],
        cwd=ROOT,
        env=rag_env(sample_data_dir, **FAST_LLM_ENV),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    sentences = result["sentences"]
    assert sentences, result["answer"]
    by_n = {c["n"]: c for c in result["citations"]}
    for s in sentences:
        assert set(s) == {"text", "supported", "citations", "span"}
        assert s["text"] in result["answer"]
        assert set(s["citations"]) <= set(by_n)
        if s["span"] is not None:
            span = s["span"]
            [cited] = [c for c in by_n.values() if c["chunk_id"] == span["chunk_id"]]
            assert cited["text"][span["start"] : span["end"]] == span["text"]


def test_a_small_number_stands_on_the_word_the_source_writes() -> None:
    from rag.qa.support import missing_keys

    source = Passage("c", "handbook.md", None, "", "Up to three days per week.", 1.0)
    assert missing_keys("3 days per week [1].", [source]) == []
    assert missing_keys("4 days per week [1].", [source]) == ["4"]

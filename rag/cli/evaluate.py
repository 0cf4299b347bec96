"""`rag eval`: retrieval (and with --generate, the answers) scored on a question file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rag.cli.kit import cli_settings, emit_json, handle_errors
from rag.config import Settings, override


@click.command("eval")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--collection", "-c", help="Collection the questions are about.")
@click.option("--k", type=click.IntRange(min=1), help="Passages an answer would use.")
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "vector", "keyword"]),
    help="Retrieval to measure (default: retrieval.mode).",
)
@click.option(
    "--generate",
    is_flag=True,
    help="Also answer each question with the LLM, for citation precision (slow on a CPU).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@handle_errors
def eval_questions(
    ctx: click.Context,
    file: Path,
    collection: str | None,
    k: int | None,
    mode: str | None,
    generate: bool,
    as_json: bool,
) -> None:
    """Measure retrieval and answers on FILE, JSON lines of {"question", "answer"?,
    "source"?, "page"?, "history"?}: hit@1/hit@5/MRR, citation precision, "not found" on
    unanswerable questions, latency. See rag/ops/evaluation.py for the definitions.
    """
    from rag.ops.evaluation import evaluate, load_questions, render_report

    questions = load_questions(file)
    settings = override(cli_settings(ctx), "retrieval", k=k, mode=mode)
    name = collection or settings.storage.collection
    report = evaluate(questions, *_eval_runners(settings, name, generate))
    r = settings.retrieval
    result = {
        "file": str(file),
        "mode": r.mode,
        # The "not found" operating point the refusal shares below were measured at.
        "min_score": r.min_score,
        "word_weight": r.word_weight,
        **report.to_json(),
    }
    if as_json:
        emit_json(result)
    else:
        click.echo(render_report(result))


def _eval_runners(settings: Settings, collection: str, generate: bool) -> tuple[Any, ...]:
    """(search, is_refused, answer) for rag.ops.evaluation.evaluate, loading what they need."""
    from rag.ops.evaluation import DEPTH, EvalQuestion
    from rag.qa.conversation import rule_rewrite
    from rag.qa.retrieval import is_relevant

    r = settings.retrieval
    answerer = None
    if generate or r.rewrite == "llm":
        from rag.qa.answerer import load_answerer

        answerer = load_answerer(settings)
        embedder, store = answerer.embedder, answerer.store
    else:
        from rag.embed.embedder import load_embedder
        from rag.index.store import open_index

        embedder = load_embedder(settings.embedding)
        store = open_index(settings.storage, embedder.name, embedder.dim)
    from rag.qa.retrieval import Retriever

    retriever = Retriever(store, embedder, r)

    def search(q: EvalQuestion) -> tuple[list[Any], str | None]:
        turns = q.turns()
        if answerer is not None:
            rewritten = answerer.standalone_query(q.question, turns)
        else:
            rewritten = rule_rewrite(q.question, turns) if r.rewrite == "rules" else None
        return retriever.search(rewritten or q.question, collection, max(DEPTH, r.k)), rewritten

    def is_refused(query: str, passages: list[Any]) -> bool:
        return not is_relevant(passages[: r.k], r.min_score, query, r.word_weight)

    # Answers given so far, by the questions of the conversation up to them: a follow-up is
    # asked after its earlier questions were answered, with those answers as its history.
    said: dict[tuple[str, ...], str] = {}

    def said_to(conversation: tuple[str, ...]) -> str:
        if conversation not in said:
            said[conversation] = ask(conversation[-1], conversation[:-1]).answer
        return said[conversation]

    def ask(question: str, before: tuple[str, ...]) -> Any:
        assert answerer is not None
        answers = [said_to(before[: n + 1]) for n in range(len(before))]
        turns = EvalQuestion(question, history=before).turns(answers)
        final = None
        for item in answerer.stream(question, collection, r.k, history=turns):
            final = item
        return final

    def answer(q: EvalQuestion) -> Any:
        reply = ask(q.question, q.history)
        said[(*q.history, q.question)] = reply.answer
        return reply

    return search, is_refused, (answer if generate else None)

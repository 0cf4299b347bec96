"""The `rag` command. Heavy modules are imported inside commands so `rag --help` is instant."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rag import admin
from rag.clikit import cli_settings, emit_json, handle_errors, printable, say
from rag.config import Settings, override
from rag.errors import UsageError

if TYPE_CHECKING:
    from ingest.pipeline import Progress


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: $RAG_CONFIG, else ~/.config/rag/config.toml).",
)
@click.version_option(package_name="rag")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Private document Q&A: ingest documents, ask questions, get answers that cite pages.

    \b
    Examples:
      rag ingest ./docs
      rag ask "How many vacation days do we get?"
      rag serve            # browser UI and API on http://127.0.0.1:8000
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


class _ProgressLine:
    """A one-line live bar on stderr (only on a terminal): files, pages, chunks, chunks/s, ETA."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.drawn = 0.0

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        final = p.stage == "done"
        # Redrawing on every event would cost more than the work it reports.
        if not final and now - self.drawn < 0.1:
            return
        self.drawn = now
        width = 24
        filled = int(width * p.files_done / p.files_total) if p.files_total else width
        eta = "--" if p.eta_s is None else f"{p.eta_s:.0f}s"
        line = (
            f"\r[{'#' * filled}{'.' * (width - filled)}] {p.files_done}/{p.files_total} files "
            f"{p.pages} pages {p.chunks} chunks {p.chunks_per_s:.1f} chunks/s ETA {eta} "
            f"{p.stage} {printable(p.current)[-32:]}"
        )
        click.echo(line.ljust(120), nl=final, err=True)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--collection", "-c", help="Collection to add the documents to.")
@click.option(
    "--sync", is_flag=True, help="Also remove documents whose files are gone from under PATHS."
)
@click.option(
    "--reembed",
    is_flag=True,
    help="First rebuild the whole index with the configured embedding model (all "
    "collections); the old index serves until the new one is complete. PATHS optional.",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS|auto",
    help="Parse and embed PATHS on a Ray cluster (HOST:PORT, ray://HOST:PORT, or auto for "
    "the one on this machine); this process plans and writes. Needs pip install 'rag[ray]'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_context
@handle_errors
def ingest(
    ctx: click.Context,
    paths: tuple[Path, ...],
    collection: str | None,
    sync: bool,
    reembed: bool,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Add or update the documents under PATHS (PDF, Markdown, HTML, reStructuredText, text).

    Unchanged files are skipped; a file that fails is reported and the rest go on.
    Exit code 1 when any file failed. One ingest writes an index at a time; a second one
    waits for it (storage.lock_wait_s).
    """
    import contextlib

    from rag.errors import UsageError
    from rag.objectstore import index_location
    from rag.writelock import write_lock

    if not paths and not reembed:
        raise UsageError("give at least one PATH to ingest (or --reembed)")
    if ray_address is not None and not paths:
        raise UsageError("--ray distributes the PATHS to ingest; give at least one")
    settings = cli_settings(ctx)
    cluster: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if ray_address is not None:
        from ingest.distributed import connect

        # Before the lock and the model load: a wrong address is reported in seconds.
        cluster = connect(ray_address, settings.ingest, settings.embedding)
    # Take the writer lock before the slow model load, so a second ingest says at once
    # that it waits (or gives up) instead of after loading a model it cannot use yet.
    storage = settings.storage
    with (
        cluster as ray_cluster,
        write_lock(
            storage.data_path,
            storage.lock_wait_s,
            say,
            location=index_location(storage),
            lease_s=storage.lease_s,
        ),
    ):
        _ingest(settings, paths, collection, sync, reembed, as_json, ray_cluster)


def _ingest(
    settings: Settings,
    paths: tuple[Path, ...],
    collection: str | None,
    sync: bool,
    reembed: bool,
    as_json: bool,
    cluster: Any = None,
) -> None:
    from ingest.pipeline import IngestReport, run_ingest
    from ingest.reembed import reembed as rebuild
    from rag.embedder import load_embedder
    from rag.originals import Originals
    from rag.store import open_index

    embedder = load_embedder(settings.embedding)
    store = open_index(
        settings.storage,
        embedder.name,
        embedder.dim,
        vector_index_rows=settings.retrieval.vector_index_rows,
    )
    progress = _ProgressLine()
    reembedded = 0
    if reembed:
        reembedded = rebuild(
            store,
            embedder,
            settings.chunking,
            settings.embedding.batch_size,
            on_progress=progress,
            on_wait=say,
        )
    report = IngestReport()
    if paths:
        report = run_ingest(
            paths,
            collection=collection or settings.storage.collection,
            chunking=settings.chunking,
            embedder=embedder,
            store=store,
            batch_size=settings.embedding.batch_size,
            on_progress=progress,
            ingest=settings.ingest,
            sync=sync,
            on_wait=say,
            cluster=cluster,
            originals=Originals.from_settings(settings.storage),
        )
    if as_json:
        emit_json({**report.to_json(), **({"reembedded": reembedded} if reembed else {})})
    else:
        if reembed:
            click.echo(f"re-embedded {reembedded} chunks with {embedder.name}")
        if paths:
            click.echo(
                f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
                f"{report.removed} removed, {len(report.failed)} failed; {report.chunks} chunks, "
                f"{report.pages} pages in {report.seconds:.1f}s"
            )
        for failure in report.failed:
            where, error = printable(failure["path"]), printable(failure["error"])
            click.echo(f"  failed ({failure['reason']}): {where}: {error}", err=True)
        for scan in report.empty_pages:
            pages = ", ".join(map(str, scan["pages"]))
            where = printable(scan["path"])
            click.echo(f"  no text on page(s) {pages} of {where} (scanned?)", err=True)
        if report.skipped:
            click.echo(f"  {report.skipped_summary()}", err=True)
    if report.failed:
        sys.exit(1)


@main.group()
def docs() -> None:
    """List or remove the documents of a collection."""


@docs.command("list")
@click.option("--collection", "-c", help="Collection to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as JSON.")
@click.pass_context
@handle_errors
def docs_list(ctx: click.Context, collection: str | None, as_json: bool) -> None:
    """Show each document of a collection with its chunk and page counts."""
    from rag.store import open_index

    settings = cli_settings(ctx)
    name = collection or settings.storage.collection
    store = open_index(settings.storage, None, 0)
    found = sorted(store.documents(name).values(), key=lambda d: d.source)
    rows = [
        {
            "source": d.source,
            "path": d.path,
            "doc_id": d.doc_id,
            "chunks": d.chunks,
            "pages": d.pages,
            "doc_hash": d.doc_hash,
        }
        for d in found
    ]
    if as_json:
        emit_json({"collection": name, "documents": rows})
        return
    for row in rows:
        pages = f", {row['pages']} pages" if row["pages"] else ""
        click.echo(f"{printable(row['source'])}  ({row['chunks']} chunks{pages})")
    total = sum(r["chunks"] for r in rows)
    click.echo(
        f"{len(rows)} document(s), {total} chunks in collection {printable(repr(name))}", err=True
    )


@docs.command("rm")
@click.argument("sources", nargs=-1, required=True)
@click.option("--collection", "-c", help="Collection to remove them from.")
@click.pass_context
@handle_errors
def docs_rm(ctx: click.Context, sources: tuple[str, ...], collection: str | None) -> None:
    """Remove documents (as `rag docs list` names them, or by file path) with their chunks."""
    from rag.errors import NotFoundError
    from rag.originals import Originals, remove_documents
    from rag.store import open_index
    from web.uploads import stored_upload

    settings = cli_settings(ctx)
    name = collection or settings.storage.collection
    store = open_index(
        settings.storage, None, 0, vector_index_rows=settings.retrieval.vector_index_rows
    )
    wanted = {str(Path(s).expanduser().resolve()): s for s in sources} | {s: s for s in sources}
    originals = Originals.from_settings(settings.storage)
    with store.writer(on_wait=say):
        docs, removed = remove_documents(
            store, originals, name, lambda d: d.source in wanted or d.path in wanted
        )
    # An upload kept under uploads/ (before originals were kept by content) goes with it too.
    for doc in docs:
        if (upload := stored_upload(doc.path, settings.storage.data_path)) is not None:
            upload.unlink(missing_ok=True)
    found = {wanted[k] for d in docs for k in (d.source, d.path) if k in wanted}
    missing = [s for s in sources if s not in found]
    click.echo(
        f"removed {len(docs)} document(s), {removed} chunks, "
        f"from collection {printable(repr(name))}"
    )
    if missing:
        raise NotFoundError(f"not in collection {name!r}: {', '.join(missing)}")


@main.command()
@click.argument("question")
@click.option("--collection", "-c", help="Collection to search.")
@click.option("--k", type=click.IntRange(min=1), help="Passages to retrieve.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer object as JSON.")
@click.pass_context
@handle_errors
def ask(
    ctx: click.Context, question: str, collection: str | None, k: int | None, as_json: bool
) -> None:
    """Answer QUESTION from the ingested documents, citing file and page."""
    from rag.answer import load_answerer
    from rag.records import Answer, Delta

    settings = override(cli_settings(ctx), "retrieval", k=k)
    answerer = load_answerer(settings)
    final: Answer | None = None
    for item in answerer.stream(
        question, collection or settings.storage.collection, settings.retrieval.k
    ):
        if isinstance(item, Delta) and not as_json:
            click.echo(printable(item.text, keep="\n\t"), nl=False)
        elif isinstance(item, Answer):
            final = item
    assert final is not None
    if as_json:
        emit_json(final.to_json())
        return
    click.echo()
    unsupported = [s for s in final.sentences if not s.supported]
    if unsupported:
        # The streamed text cannot be marked after the fact: the doubtful sentences follow.
        click.echo("\nNot found in the cited sources:")
        for s in unsupported:
            click.echo(f"  - {printable(' '.join(s.text.split()))}  [unsupported]")
    if final.citations:
        click.echo("\nSources:")
        for c in final.citations:
            page = f", page {c.page}" if c.page else ""
            heading = f" ({printable(c.heading)})" if c.heading else ""
            click.echo(f"  [{c.n}] {printable(c.source)}{page}{heading}")
    u = final.usage
    click.echo(
        f"\n{u.prompt_tokens} prompt + {u.completion_tokens} answer tokens, "
        f"first token {u.ttft_s:.2f}s, {u.tokens_per_s:.1f} tokens/s",
        err=True,
    )


@main.command()
@click.argument("query")
@click.option("--collection", "-c", help="Collection to search.")
@click.option("--k", type=click.IntRange(min=1), help="Passages to return.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@click.pass_context
@handle_errors
def search(
    ctx: click.Context, query: str, collection: str | None, k: int | None, as_json: bool
) -> None:
    """Show the passages that best match QUERY, without generating an answer."""
    from rag.embedder import load_embedder
    from rag.retrieval import Retriever
    from rag.store import open_index

    settings = cli_settings(ctx)
    if not query.strip():
        raise UsageError("the query is empty")
    embedder = load_embedder(settings.embedding)
    store = open_index(settings.storage, embedder.name, embedder.dim)
    retriever = Retriever(store, embedder, settings.retrieval)
    hits = retriever.search(
        query, collection or settings.storage.collection, k or settings.retrieval.k
    )
    if as_json:
        emit_json({"hits": [{"n": n, **_fields(h)} for n, h in enumerate(hits, start=1)]})
        return
    for n, h in enumerate(hits, start=1):
        page = f", page {h.page}" if h.page else ""
        click.echo(f"[{n}] {printable(h.source)}{page}  score {h.score:.3f}")
        click.echo("    " + printable(" ".join(h.text.split())[:200]))


@main.command("eval")
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
    unanswerable questions, latency. See rag/evaluation.py for the definitions.
    """
    from rag.evaluation import evaluate, load_questions, render_report

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
    """(search, is_refused, answer) for rag.evaluation.evaluate, loading what they need."""
    from rag.conversation import rule_rewrite
    from rag.evaluation import DEPTH, EvalQuestion
    from rag.retrieval import is_relevant

    r = settings.retrieval
    answerer = None
    if generate or r.rewrite == "llm":
        from rag.answer import load_answerer

        answerer = load_answerer(settings)
        embedder, store = answerer.embedder, answerer.store
    else:
        from rag.embedder import load_embedder
        from rag.store import open_index

        embedder = load_embedder(settings.embedding)
        store = open_index(settings.storage, embedder.name, embedder.dim)
    from rag.retrieval import Retriever

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


def _fields(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


@main.command()
@click.option("--host", help="Address to bind (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default from config: 8000).")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the browser UI and the HTTP API."""
    import uvicorn

    from rag.apikeys import load_keys
    from web.app import create_app

    settings = override(cli_settings(ctx), "server", host=host, port=port)
    bind = settings.server.host
    if not load_keys(settings.storage.data_path):
        if bind not in LOOPBACK_HOSTS:
            raise UsageError(
                f"refusing to serve on {bind} without API keys: anyone on the network could "
                "read the documents. Create a key with `rag keys add NAME --collection C`, "
                "or serve on 127.0.0.1"
            )
        click.echo("no API keys configured: serving this machine only (loopback)", err=True)
    app = create_app(settings)
    click.echo(f"rag serving on http://{bind}:{settings.server.port}", err=True)
    uvicorn.run(app, host=bind, port=settings.server.port, log_level="warning")


@main.command()
@click.pass_context
@handle_errors
def mcp(ctx: click.Context) -> None:
    """Serve the documents to an AI assistant over MCP (Model Context Protocol) on stdio.

    An assistant starts this command itself (see the README for its config) and calls the
    tools search, ask, list_collections and list_documents; documents are resources
    rag://COLLECTION/SOURCE. Reads every collection, as the other commands do. `rag serve`
    offers the same over HTTP at /mcp, with API keys.
    """
    from web.mcp import run_stdio

    run_stdio(cli_settings(ctx))


# The operator's commands live in rag.admin.
for _command in (
    admin.keys,
    admin.plan,
    admin.doctor,
    admin.maintain,
    admin.backup,
    admin.restore,
    admin.models,
    admin.report,
):
    main.add_command(_command)

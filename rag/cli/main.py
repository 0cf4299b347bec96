"""The `rag` command. Heavy modules are imported inside commands so `rag --help` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rag import __version__
from rag.cli import admin, documents, evaluate
from rag.cli.kit import cli_settings, emit_json, handle_errors, printable
from rag.config import override
from rag.errors import UsageError

if TYPE_CHECKING:
    pass


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: $RAG_CONFIG, else ~/.config/rag/config.toml).",
)
@click.version_option(__version__, prog_name="rag")
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
    from rag.qa.answerer import load_answerer
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
    from rag.embed.embedder import load_embedder
    from rag.index.store import open_index
    from rag.qa.retrieval import Retriever

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

    from rag.accounts.apikeys import load_keys
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

    An assistant starts this command itself (docs/http-api.md shows its config) and calls the
    tools search, ask, list_collections and list_documents; documents are resources
    rag://COLLECTION/SOURCE. Reads every collection, as the other commands do. `rag serve`
    offers the same over HTTP at /mcp, with API keys.
    """
    from web.mcp import run_stdio

    run_stdio(cli_settings(ctx))


# The other commands live beside this one: the documents', evaluation's and the operator's.
for _command in (
    documents.ingest,
    documents.docs,
    evaluate.eval_questions,
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

"""The `rag` command. Heavy modules are imported inside commands so `rag --help` is instant."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rag.config import Settings, load_settings, override
from rag.errors import RagError

if TYPE_CHECKING:
    from ingest.pipeline import Progress


def _handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a RagError as one line and exit with its code (1 domain error, 2 usage/config)."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RagError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(e.exit_code)

    return run


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


def _settings(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj.get("config_path"))
    except RagError as e:
        click.echo(f"error: {e.message}", err=True)
        sys.exit(e.exit_code)


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


class _ProgressLine:
    """A one-line live bar on stderr (only on a terminal): files, chunks, chunks/s, ETA."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.started = time.perf_counter()

    def __call__(self, p: Progress) -> None:
        if not self.enabled or p.files_total == 0:
            return
        elapsed = time.perf_counter() - self.started
        rate = p.chunks / elapsed if elapsed > 0 else 0.0
        eta = elapsed / p.files_done * (p.files_total - p.files_done) if p.files_done else 0.0
        width = 24
        filled = int(width * p.files_done / p.files_total)
        line = (
            f"\r[{'#' * filled}{'.' * (width - filled)}] {p.files_done}/{p.files_total} files "
            f"{p.chunks} chunks {rate:.1f} chunks/s ETA {eta:.0f}s {p.current[-40:]}"
        )
        click.echo(line.ljust(120), nl=p.files_done == p.files_total, err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--collection", "-c", help="Collection to add the documents to.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_context
@_handle_errors
def ingest(
    ctx: click.Context, paths: tuple[Path, ...], collection: str | None, as_json: bool
) -> None:
    """Add or update the documents under PATHS (Markdown, text, PDF).

    Unchanged files are skipped; a file that fails is reported and the rest go on.
    Exit code 1 when any file failed.
    """
    from ingest.pipeline import run_ingest
    from rag.embedder import load_embedder
    from rag.store import open_store

    settings = _settings(ctx)
    embedder = load_embedder(settings.embedding)
    store = open_store(settings.storage.data_path, embedder.name, embedder.dim)
    report = run_ingest(
        paths,
        collection=collection or settings.storage.collection,
        chunking=settings.chunking,
        embedder=embedder,
        store=store,
        batch_size=settings.embedding.batch_size,
        on_progress=_ProgressLine(),
    )
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(
            f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
            f"{len(report.failed)} failed; {report.chunks} chunks in {report.seconds:.1f}s"
        )
        for failure in report.failed:
            click.echo(f"  failed: {failure['path']}: {failure['error']}", err=True)
        if report.skipped:
            click.echo(f"  skipped {len(report.skipped)} file(s) of unsupported types", err=True)
    if report.failed:
        sys.exit(1)


@main.command()
@click.argument("question")
@click.option("--collection", "-c", help="Collection to search.")
@click.option("--k", type=click.IntRange(min=1), help="Passages to retrieve.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer object as JSON.")
@click.pass_context
@_handle_errors
def ask(
    ctx: click.Context, question: str, collection: str | None, k: int | None, as_json: bool
) -> None:
    """Answer QUESTION from the ingested documents, citing file and page."""
    from rag.answer import load_answerer
    from rag.records import Answer, Delta

    settings = override(_settings(ctx), "retrieval", k=k)
    answerer = load_answerer(settings)
    final: Answer | None = None
    for item in answerer.stream(
        question, collection or settings.storage.collection, settings.retrieval.k
    ):
        if isinstance(item, Delta) and not as_json:
            click.echo(item.text, nl=False)
        elif isinstance(item, Answer):
            final = item
    assert final is not None
    if as_json:
        _emit_json(final.to_json())
        return
    click.echo()
    if final.citations:
        click.echo("\nSources:")
        for c in final.citations:
            page = f", page {c.page}" if c.page else ""
            heading = f" ({c.heading})" if c.heading else ""
            click.echo(f"  [{c.n}] {c.source}{page}{heading}")
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
@_handle_errors
def search(
    ctx: click.Context, query: str, collection: str | None, k: int | None, as_json: bool
) -> None:
    """Show the passages that best match QUERY, without generating an answer."""
    from rag.embedder import load_embedder
    from rag.store import open_store

    settings = _settings(ctx)
    embedder = load_embedder(settings.embedding)
    store = open_store(settings.storage.data_path, embedder.name, embedder.dim)
    if not query.strip():
        raise RagError("the query is empty")
    hits = store.search(
        collection or settings.storage.collection,
        embedder.embed_query(query),
        k or settings.retrieval.k,
    )
    if as_json:
        _emit_json({"hits": [{"n": n, **_fields(h)} for n, h in enumerate(hits, start=1)]})
        return
    for n, h in enumerate(hits, start=1):
        page = f", page {h.page}" if h.page else ""
        click.echo(f"[{n}] {h.source}{page}  score {h.score:.3f}")
        click.echo("    " + " ".join(h.text.split())[:200])


def _fields(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


@main.command()
@click.option("--host", help="Address to bind (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default from config: 8000).")
@click.pass_context
@_handle_errors
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the browser UI and the HTTP API."""
    import uvicorn

    from web.app import create_app

    settings = override(_settings(ctx), "server", host=host, port=port)
    app = create_app(settings)
    click.echo(f"rag serving on http://{settings.server.host}:{settings.server.port}", err=True)
    uvicorn.run(app, host=settings.server.host, port=settings.server.port, log_level="warning")

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
from rag.errors import RagError, UsageError

if TYPE_CHECKING:
    from ingest.pipeline import Progress


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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
            f"{p.stage} {p.current[-32:]}"
        )
        click.echo(line.ljust(120), nl=final, err=True)


def _say(message: str) -> None:
    click.echo(message, err=True)


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
@_handle_errors
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
    settings = _settings(ctx)
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
            _say,
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
    from rag.store import open_index

    embedder = load_embedder(settings.embedding)
    store = open_index(settings.storage, embedder.name, embedder.dim)
    store.vector_index_rows = settings.retrieval.vector_index_rows
    progress = _ProgressLine()
    reembedded = 0
    if reembed:
        reembedded = rebuild(
            store,
            embedder,
            settings.chunking,
            settings.embedding.batch_size,
            on_progress=progress,
            on_wait=_say,
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
            on_wait=_say,
            cluster=cluster,
        )
    if as_json:
        _emit_json({**report.to_json(), **({"reembedded": reembedded} if reembed else {})})
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
            click.echo(
                f"  failed ({failure['reason']}): {failure['path']}: {failure['error']}", err=True
            )
        for scan in report.empty_pages:
            pages = ", ".join(map(str, scan["pages"]))
            click.echo(f"  no text on page(s) {pages} of {scan['path']} (scanned?)", err=True)
        if report.skipped:
            click.echo(f"  skipped {len(report.skipped)} file(s) of unsupported types", err=True)
    if report.failed:
        sys.exit(1)


@main.group()
def docs() -> None:
    """List or remove the documents of a collection."""


@docs.command("list")
@click.option("--collection", "-c", help="Collection to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as JSON.")
@click.pass_context
@_handle_errors
def docs_list(ctx: click.Context, collection: str | None, as_json: bool) -> None:
    """Show each document of a collection with its chunk and page counts."""
    from rag.store import open_index

    settings = _settings(ctx)
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
        _emit_json({"collection": name, "documents": rows})
        return
    for row in rows:
        pages = f", {row['pages']} pages" if row["pages"] else ""
        click.echo(f"{row['source']}  ({row['chunks']} chunks{pages})")
    total = sum(r["chunks"] for r in rows)
    click.echo(f"{len(rows)} document(s), {total} chunks in collection {name!r}", err=True)


@docs.command("rm")
@click.argument("sources", nargs=-1, required=True)
@click.option("--collection", "-c", help="Collection to remove them from.")
@click.pass_context
@_handle_errors
def docs_rm(ctx: click.Context, sources: tuple[str, ...], collection: str | None) -> None:
    """Remove documents (as `rag docs list` names them, or by file path) with their chunks."""
    from rag.errors import NotFoundError
    from rag.store import REMOVAL_KEEP_VERSIONS_S, open_index

    settings = _settings(ctx)
    name = collection or settings.storage.collection
    store = open_index(settings.storage, None, 0, keep_versions_s=REMOVAL_KEEP_VERSIONS_S)
    with store.writer(on_wait=_say):
        stored = store.documents(name).values()
        ids: list[str] = []
        missing: list[str] = []
        for source in sources:
            resolved = str(Path(source).expanduser().resolve())
            match = [d.doc_id for d in stored if source in (d.source, d.path) or d.path == resolved]
            ids.extend(match)
            if not match:
                missing.append(source)
        removed = store.delete_documents(name, ids)
        if ids:
            store.maintain(wrote=True)
    click.echo(f"removed {len(set(ids))} document(s), {removed} chunks, from collection {name!r}")
    if missing:
        raise NotFoundError(f"not in collection {name!r}: {', '.join(missing)}")


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
    from rag.retrieval import Retriever
    from rag.store import open_index

    settings = _settings(ctx)
    if not query.strip():
        raise UsageError("the query is empty")
    embedder = load_embedder(settings.embedding)
    store = open_index(settings.storage, embedder.name, embedder.dim)
    retriever = Retriever(store, embedder, settings.retrieval)
    hits = retriever.search(
        query, collection or settings.storage.collection, k or settings.retrieval.k
    )
    if as_json:
        _emit_json({"hits": [{"n": n, **_fields(h)} for n, h in enumerate(hits, start=1)]})
        return
    for n, h in enumerate(hits, start=1):
        page = f", page {h.page}" if h.page else ""
        click.echo(f"[{n}] {h.source}{page}  score {h.score:.3f}")
        click.echo("    " + " ".join(h.text.split())[:200])


@main.command("eval")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--collection", "-c", help="Collection the questions are about.")
@click.option("--k", type=click.IntRange(min=1), help="Passages an answer would use.")
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "vector"]),
    help="Retrieval to measure (default: retrieval.mode).",
)
@click.option(
    "--generate",
    is_flag=True,
    help="Also answer each question with the LLM, for citation precision (slow on a CPU).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@_handle_errors
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
    settings = override(_settings(ctx), "retrieval", k=k, mode=mode)
    name = collection or settings.storage.collection
    report = evaluate(questions, *_eval_runners(settings, name, generate))
    result = {"file": str(file), "mode": settings.retrieval.mode, **report.to_json()}
    if as_json:
        _emit_json(result)
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
        return not is_relevant(passages[: r.k], r.min_score, query)

    def answer(q: EvalQuestion) -> Any:
        assert answerer is not None
        final = None
        for item in answerer.stream(q.question, collection, r.k, history=q.turns()):
            final = item
        return final

    return search, is_refused, (answer if generate else None)


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

    from rag.apikeys import load_keys
    from web.app import create_app

    settings = override(_settings(ctx), "server", host=host, port=port)
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


@main.group()
def keys() -> None:
    """Manage API keys; with at least one key, every API call must carry one."""


@keys.command("add")
@click.argument("name")
@click.option(
    "--collection",
    "-c",
    "collections",
    multiple=True,
    required=True,
    help="A collection the key may read; repeat for more, '*' for all.",
)
@click.pass_context
@_handle_errors
def keys_add(ctx: click.Context, name: str, collections: tuple[str, ...]) -> None:
    """Create key NAME and print it once (only its hash is stored)."""
    from rag.apikeys import add_key

    token = add_key(_settings(ctx).storage.data_path, name, list(collections))
    click.echo(token)
    click.echo(f"key {name!r} created for {', '.join(collections)}; it is shown only now", err=True)


@keys.command("list")
@click.pass_context
@_handle_errors
def keys_list(ctx: click.Context) -> None:
    """List the keys' names and collections (never the keys themselves)."""
    from rag.apikeys import load_keys

    for key in load_keys(_settings(ctx).storage.data_path):
        click.echo(f"{key.name}\t{','.join(key.collections)}")


@keys.command("rm")
@click.argument("name")
@click.pass_context
@_handle_errors
def keys_rm(ctx: click.Context, name: str) -> None:
    """Remove key NAME; requests with it are refused from then on."""
    from rag.apikeys import remove_key

    remove_key(_settings(ctx).storage.data_path, name)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--memory-gb",
    type=click.FloatRange(min=0, min_open=True),
    help="Plan for a machine with this much memory (GB as sold: 16 means 16 GiB).",
)
@click.option("--chip", help='Plan for this chip, e.g. "M4 Max"; Apple chips plan for Metal.')
@click.option(
    "--kv-bits",
    type=click.Choice(["8", "4"]),
    help="Plan the catalog with a quantized KV cache (what-if; serving keeps it unquantized).",
)
@click.pass_context
@_handle_errors
def plan(
    ctx: click.Context,
    as_json: bool,
    memory_gb: float | None,
    chip: str | None,
    kv_bits: str | None,
) -> None:
    """Show how models fit this machine: budget, best model, context, concurrency, speed.

    --memory-gb and --chip describe another machine; the [hardware] overrides in the
    config apply to this one only.
    """
    from rag.sizing import render_sizing, size_machine

    sizing = size_machine(_settings(ctx), memory_gb, chip, int(kv_bits) if kv_bits else None)
    if as_json:
        _emit_json(sizing.to_json())
    else:
        click.echo(render_sizing(sizing))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
@_handle_errors
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check this install: packages, MLX backend, memory, models, disk, index and port.

    Each check is ok, warn or fail, with its evidence and a fix; exit code 1 when any fails.
    See docs/troubleshooting.md.
    """
    from rag.doctor import checks_to_json, render_checks, run_checks

    checks = run_checks(_settings(ctx))
    report = checks_to_json(checks)
    if as_json:
        _emit_json(report)
    else:
        click.echo(render_checks(checks))
    sys.exit(0 if report["ok"] else 1)


@main.command()
@click.option("--now", is_flag=True, help="Run even if maintenance.interval_h has not passed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@_handle_errors
def maintain(ctx: click.Context, now: bool, as_json: bool) -> None:
    """Compact the index and delete versions older than storage.keep_versions_s.

    Runs only when maintenance.interval_h has passed since the last run, so cron or launchd
    may call it often. With storage.keep_versions_s = 0 it erases: no file keeps the text
    of removed documents. Reports what it reclaimed.
    """
    from rag.maintenance import run_maintenance
    from rag.planner import format_bytes

    report = run_maintenance(_settings(ctx), force=now, on_wait=_say)
    if as_json:
        _emit_json(report.to_json())
        return
    if report.reason == "no index":
        click.echo("nothing to maintain: no index yet")
    elif not report.ran:
        when = "never" if report.next_due_s is None else f"in {report.next_due_s / 3600:.1f}h"
        click.echo(f"not due (next run {when}, maintenance.interval_h); --now runs it anyway")
    else:
        click.echo(
            f"{report.versions_before} -> {report.versions_after} versions, "
            f"{report.fragments_before} -> {report.fragments_after} fragments, "
            f"{format_bytes(report.bytes_before)} -> {format_bytes(report.bytes_after)} "
            f"({format_bytes(report.bytes_reclaimed)} reclaimed), {report.rows} chunks, "
            f"in {report.seconds:.1f}s"
        )
        if report.erase:
            how = "; rewrote the table without them" if report.rewrote else ""
            click.echo(f"erased: no older version or deleted row is left on disk{how}")


@main.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the backup's manifest as JSON.")
@click.pass_context
@_handle_errors
def backup(ctx: click.Context, dest: Path, as_json: bool) -> None:
    """Copy the index, API keys and config file into the new directory DEST.

    Safe while `rag serve` and `rag ingest` run: it copies the last committed version, never
    a half-written one. `rag restore DEST` puts it back.
    """
    from rag.backup import create_backup
    from rag.config import config_file
    from rag.objectstore import index_location

    settings = _settings(ctx)
    manifest = create_backup(
        settings.storage.data_path,
        dest,
        config_file(ctx.obj.get("config_path")),
        _say,
        index_location(settings.storage),
    )
    if as_json:
        _emit_json(manifest)
        return
    click.echo(
        f"backed up table {manifest['table']} version {manifest['table_version']} "
        f"({manifest['rows']} chunks) to {manifest['dest']} in {manifest['seconds']:.1f}s"
    )


@main.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a data dir that already holds data.")
@click.option("--json", "as_json", is_flag=True, help="Print what was restored as JSON.")
@click.pass_context
@_handle_errors
def restore(ctx: click.Context, src: Path, force: bool, as_json: bool) -> None:
    """Put the backup SRC (from `rag backup`) in place as storage.data_dir.

    Checks the backup against its manifest first, and swaps it in whole. Refuses a data dir
    that holds anything unless --force; stop `rag serve` and ingests before restoring.
    """
    from rag.backup import restore_backup
    from rag.errors import ConfigError

    settings = _settings(ctx)
    if settings.storage.remote:
        raise ConfigError(
            f"rag restore writes a local data dir, and storage.uri = {settings.storage.uri!r} "
            "puts the index in an object store: restore with RAG_STORAGE_URI= (empty) into "
            "a local data dir, then re-ingest into the bucket or use the bucket's versioning"
        )
    result = restore_backup(
        src, settings.storage.data_path, force, settings.storage.lock_wait_s, _say
    )
    if as_json:
        _emit_json(result)
        return
    click.echo(
        f"restored table {result['table']} ({result['rows']} chunks, backed up "
        f"{result['created']}) into {result['restored_to']}"
    )
    if result["config_copy"]:
        click.echo(
            f"the backup's config file is {result['config_copy']}; use it (or check yours "
            "with `rag doctor`) if this machine should embed the same way",
            err=True,
        )


@main.group()
def models() -> None:
    """Model files: convert them for other engines."""


@models.command("convert")
@click.argument("source")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--bits",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Quantization of a Hugging Face source (a GGUF keeps its own).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def models_convert(source: str, directory: Path, bits: str, as_json: bool) -> None:
    """Write an MLX model directory DIRECTORY from SOURCE.

    SOURCE: "bundled", a .gguf file (Q4_0, Q4_1, Q8_0, F16 or F32; its weights are kept as
    they are) or a Hugging Face model directory (quantized with mlx_lm). mlx_lm and
    mlx_lm.server load the result (`mlx_lm.server --model DIRECTORY`), and so does
    llm.model.
    """
    from rag.modeldir import convert_model

    done = convert_model(source, directory, bits=int(bits))
    result = {
        "source": done.source,
        "directory": str(done.directory),
        "bits": done.bits,
        "weight_bytes": done.weight_bytes,
        "method": done.method,
    }
    if as_json:
        _emit_json(result)
    else:
        click.echo(
            f"wrote {done.directory} ({done.weight_bytes / 1e6:.0f} MB of weights, "
            f"{done.bits or 'unquantized'}-bit) from {done.source}"
        )


@main.group()
def report() -> None:
    """Reports from what the service recorded."""


@report.command("cost")
@click.option("--since", help="From this long ago (12h, 7d, 2w) or this date (2026-11-01).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@_handle_errors
def report_cost(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """Cost of the answers `rag serve` gave, per API key and per collection.

    Each answer is charged the machine's cost (settings [cost]: hardware write-off and
    power) for the seconds it kept the model generating, and set against what the same
    tokens cost at the configured cloud price.
    """
    from rag.cost import parse_since, render_report, tally
    from rag.usage import UsageLedger

    settings = _settings(ctx)
    since_s = parse_since(since)
    result = tally(UsageLedger(settings.storage.data_path).read(since_s), since_s)
    as_dict = result.to_json(settings.cost)
    if as_json:
        _emit_json(as_dict)
    else:
        click.echo(render_report(as_dict))

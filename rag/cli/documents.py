"""`rag ingest` and `rag docs`: bring documents into the index, list them, remove them."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ingest.report import IngestReport, Progress
from rag.cli.kit import cli_settings, emit_json, handle_errors, page_ranges, printable, say
from rag.config import Settings


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
        ocr = f" ({p.ocr_pages} OCR)" if p.ocr_pages else ""
        line = (
            f"\r[{'#' * filled}{'.' * (width - filled)}] {p.files_done}/{p.files_total} files "
            f"{p.pages} pages{ocr} {p.chunks} chunks {p.chunks_per_s:.1f} chunks/s ETA {eta} "
            f"{p.stage} {printable(p.current)[-32:]}"
        )
        click.echo(line.ljust(120), nl=final, err=True)


def ocr_note(report: IngestReport) -> str:
    """What the PDF pages held beyond their text layer: pages read by OCR, tables."""
    parts = [f"{report.ocr_pages} by OCR"] if report.ocr_pages else []
    parts += [f"{report.tables} tables"] if report.tables else []
    return f" ({', '.join(parts)})" if parts else ""


@click.command()
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
    from rag.index.location import index_location
    from rag.index.writelock import write_lock

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
    from ingest.reembed import reembed as rebuild
    from ingest.report import IngestReport
    from ingest.run import run_ingest
    from rag.embed.embedder import load_embedder
    from rag.index.originals import Originals
    from rag.index.store import open_index

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
                f"{report.pages} pages{ocr_note(report)} in {report.seconds:.1f}s"
            )
        for failure in report.failed:
            where, error = printable(failure["path"]), printable(failure["error"])
            click.echo(f"  failed ({failure['reason']}): {where}: {error}", err=True)
        for scan in report.empty_pages:
            pages = page_ranges(scan["pages"])
            where = printable(scan["path"])
            click.echo(f"  no text on page(s) {pages} of {where}", err=True)
        for unread in report.ocr_failed:
            pages = page_ranges(unread["pages"])
            where, error = printable(unread["path"]), printable(unread["error"])
            click.echo(f"  not OCR'd: page(s) {pages} of {where}: {error}", err=True)
        if report.skipped:
            click.echo(f"  {report.skipped_summary()}", err=True)
    if report.failed:
        sys.exit(1)


@click.group()
def docs() -> None:
    """List or remove the documents of a collection."""


@docs.command("list")
@click.option("--collection", "-c", help="Collection to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as JSON.")
@click.pass_context
@handle_errors
def docs_list(ctx: click.Context, collection: str | None, as_json: bool) -> None:
    """Show each document of a collection with its chunk and page counts."""
    from rag.index.store import open_index

    settings = cli_settings(ctx)
    name = collection or settings.storage.collection
    store = open_index(settings.storage, None, 0)
    found = sorted(store.documents(name).values(), key=lambda d: d.source)
    rows: list[dict[str, Any]] = [
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
    from rag.index.originals import Originals, remove_documents
    from rag.index.store import open_index
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

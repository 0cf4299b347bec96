"""`run_ingest`: one ingest of a batch, here or on a Ray cluster.

What a run does is ingest/pipeline.py's (its docstring tells the whole flow); this picks
where the parsing and embedding happen: in this process's parse pool, or on a cluster's
actors (ingest/distributed.py). Planning, skipping and writing stay in the one writer here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ingest.discovery import discover, size_bytes
from ingest.distributed import RayCluster, ingest_on_ray
from ingest.pipeline import IngestRun, display_source
from ingest.report import IngestReport, Progress, ProgressMeter
from rag.config import ChunkingSettings, IngestSettings
from rag.embed.embedder import Embedder
from rag.index.originals import Originals
from rag.index.store import Store


def run_ingest(
    paths: Iterable[Path],
    *,
    collection: str,
    chunking: ChunkingSettings,
    embedder: Embedder,
    store: Store,
    batch_size: int = 32,
    on_progress: Callable[[Progress], None] | None = None,
    ingest: IngestSettings | None = None,
    sync: bool = False,
    on_wait: Callable[[str], None] | None = None,
    names: Mapping[Path, str] | None = None,
    cluster: RayCluster | None = None,
    originals: Originals | None = None,
) -> IngestReport:
    """Bring `collection` up to date with the files under `paths`; see the module docstring.

    With `sync`, documents whose files are gone from under `paths` are removed too.
    `names` gives files a display name (uploads stored under generated names): it becomes
    the document's source and its identity, so uploading the same name again replaces it.
    With `cluster`, files are parsed and embedded on Ray workers (ingest/distributed.py);
    planning, skipping and writing stay here, in the one writer. With `originals` each
    written document's file is kept there (rag.index.originals), and the originals no
    document refers to after the run are deleted.
    """
    started = time.perf_counter()
    roots = [Path(p) for p in paths]
    found = discover(roots)
    files = found.files
    report = IngestReport()
    for path, reason in found.skipped:
        report.skip(display_source(path), reason)
    for path, reason, message in found.failed:
        report.fail((names or {}).get(path) or display_source(path), message, reason)
    with store.writer(on_wait):
        meter = ProgressMeter(on_progress, len(files))
        meter.work_total = sum(size_bytes(e.target) for e in files)
        run = IngestRun(
            collection,
            chunking,
            ingest or IngestSettings(),
            embedder,
            store,
            batch_size,
            meter=meter,
            report=report,
            names=names,
            originals=originals,
        )
        if sync:
            run.remove_gone(roots, found)
        if cluster is None:
            run.ingest(files)
        else:
            ingest_on_ray(run, files, cluster)
        if originals is not None and run.released:
            originals.release(run.released, store.doc_hashes())
        run.meter.emit("optimizing")
        store.maintain(wrote=run.wrote)
    report.seconds = round(time.perf_counter() - started, 3)
    run.meter.emit("done")
    return report

"""Upload ingest jobs: queued, run one at a time through the ingest pipeline, watched by id.

A job is one upload's files for one collection. Jobs and document removals run on a single
writer thread, so they queue behind each other and the index has one writer; rag.index.writelock
also keeps out a `rag ingest` in another process (a job then says it waits for it). The
event loop only enqueues work and reads job state: parsing, embedding and writing never run
on it. A file that fails (unsupported, unreadable, no text, too slow) fails alone and its
reason is in the job; the others are ingested.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from litestar import Request, get
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ingest.discovery import SUFFIXES, kind_of
from ingest.pipeline import make_named_doc_id
from ingest.run import run_ingest
from rag.config import Settings
from rag.errors import NotFoundError, OverloadedError, RagError
from rag.index.originals import Originals
from rag.index.store import open_index
from web.auth import AUTH_ONLY, Caller
from web.metrics import record_ingest_chunks, record_ingest_file, track_ingest
from web.uploads import Staging, Upload, stored_upload

if TYPE_CHECKING:
    from ingest.report import Progress
    from rag.embed.embedder import Embedder
    from rag.index.store import Store, StoredDocument

T = TypeVar("T")
log = logging.getLogger("rag.web")

# Finished jobs stay readable for polling this long after they end, up to this many.
KEEP_FINISHED_S = 3600.0
KEEP_FINISHED_JOBS = 200
# How often a job's event stream looks for news, and how often it says it is alive.
WATCH_INTERVAL_S = 0.2
KEEPALIVE_S = 15.0


@dataclass
class JobFile:
    name: str
    size_bytes: int
    path: Path
    # queued, ingesting, then indexed (written), unchanged (same bytes already indexed) or
    # failed (with `reason`, one of ParseError's reasons, "unsupported" or "store").
    state: str = "queued"
    error: str = ""
    reason: str = ""

    def fail(self, error: str, reason: str) -> None:
        self.state, self.error, self.reason = "failed", error, reason

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size_bytes": self.size_bytes,
            "state": self.state,
            "error": self.error,
            "reason": self.reason,
        }


@dataclass
class IngestJob:
    id: str
    collection: str
    owner: str  # the API key's name; a job is visible to every key that reads its collection
    files: list[JobFile]
    state: str = "queued"  # queued, running, done (each file has its outcome), failed
    stage: str = ""  # the pipeline's stage while running (parsing, embedding, writing, …)
    message: str = ""  # why it waits (the index lock) or why it failed as a whole
    files_done: int = 0
    chunks: int = 0
    eta_s: float | None = None
    report: dict[str, Any] | None = None
    created_s: float = field(default_factory=time.time)
    started_s: float | None = None
    finished_s: float | None = None
    version: int = 0  # bumped on every change, so watchers send only news

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "collection": self.collection,
            "state": self.state,
            "stage": self.stage,
            "message": self.message,
            "files_done": self.files_done,
            "files_total": len(self.files),
            "chunks": self.chunks,
            "eta_s": self.eta_s,
            "files": [f.to_json() for f in self.files],
            "report": self.report,
            "created_s": round(self.created_s, 3),
            "started_s": None if self.started_s is None else round(self.started_s, 3),
            "finished_s": None if self.finished_s is None else round(self.finished_s, 3),
        }


class JobRunner:
    """The writer thread: upload jobs and document removals, one at a time, in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-writer")
        self._lock = threading.Lock()  # guards the jobs and their fields across threads
        self._jobs: OrderedDict[str, IngestJob] = OrderedDict()
        self._store: Store | None = None
        self.originals = Originals.from_settings(settings.storage)
        self.stopping = threading.Event()  # set on SIGTERM: event streams end
        self.staging = Staging(settings.storage.data_path)  # where uploads wait for their job

    def start(self) -> None:
        self.staging.start()
        track_ingest(
            lambda: self._count("queued"),
            lambda: self._count("running"),
            self._files_pending,
        )

    def close(self) -> None:
        self.stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.staging.close()

    # -- on the event loop: cheap, never blocking ----------------------------------------

    def check_capacity(self) -> None:
        """Refuse a new upload while server.max_ingest_jobs jobs are queued or running."""
        limit = self.settings.server.max_ingest_jobs
        with self._lock:
            active = sum(not j.finished for j in self._jobs.values())
        if active >= limit:
            raise OverloadedError(
                f"{active} upload jobs are queued or running (server.max_ingest_jobs = "
                f"{limit}); retry when one has finished"
            )

    def submit(
        self, collection: str, owner: str, uploads: list[Upload], embedder: Embedder
    ) -> IngestJob:
        files = [JobFile(u.name, u.size_bytes, u.path) for u in uploads]
        job = IngestJob(uuid.uuid4().hex, collection, owner, files)
        with self._lock:
            self._forget_old()
            self._jobs[job.id] = job
        self._executor.submit(self._run, job, embedder)
        return job

    def find(self, job_id: str, caller: Caller) -> IngestJob:
        """The job, if the caller may read its collection; else 404, the same as no job."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or not caller.visible([job.collection]):
            raise NotFoundError(f"no job {job_id!r}")
        return job

    def snapshot(self, job: IngestJob) -> tuple[int, dict[str, Any], bool]:
        with self._lock:
            return job.version, job.to_json(), job.finished

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write (a removal) on the writer thread, after the jobs queued before it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _count(self, state: str) -> int:
        with self._lock:
            return sum(j.state == state for j in self._jobs.values())

    def _files_pending(self) -> int:
        with self._lock:
            return sum(len(j.files) - j.files_done for j in self._jobs.values() if not j.finished)

    def _forget_old(self) -> None:
        now = time.time()
        finished = sorted(
            (j for j in self._jobs.values() if j.finished), key=lambda j: j.finished_s or now
        )
        excess = len(finished) - KEEP_FINISHED_JOBS
        for i, j in enumerate(finished):
            if i < excess or now - (j.finished_s or now) > KEEP_FINISHED_S:
                del self._jobs[j.id]

    def _update(self, job: IngestJob, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            job.version += 1

    # -- on the writer thread -----------------------------------------------------------

    def writer_store(self, embedder: Embedder | None = None) -> Store:

        storage = self.settings.storage
        if self._store is None or (embedder and self._store.embedding_model != embedder.name):
            # Strong read consistency: a job decides what is unchanged from what the index
            # holds now, including what `rag ingest` in another process just wrote.
            self._store = open_index(
                storage,
                embedder.name if embedder else None,
                embedder.dim if embedder else 0,
                read_consistency_s=0,
                vector_index_rows=self.settings.retrieval.vector_index_rows,
            )
        return self._store

    def _run(self, job: IngestJob, embedder: Embedder) -> None:
        self._update(job, state="running", started_s=time.time())
        try:
            self._ingest(job, embedder)
            state, message = "done", ""
        except RagError as e:
            state, message = "failed", e.message
        except Exception:
            log.exception("upload job %s failed", job.id)
            state, message = "failed", "the job failed unexpectedly; the server log has details"
        with self._lock:
            for f in job.files:
                if f.state not in ("indexed", "unchanged", "failed"):
                    f.fail(message or "not ingested", "store")
                # The staged copy is done with: what is kept of an indexed file is its
                # original (rag.index.originals), under the same rules as a file `rag ingest` read.
                f.path.unlink(missing_ok=True)
                record_ingest_file(f.state)
            job.state, job.message, job.finished_s = state, message, time.time()
            job.files_done = len(job.files)
            job.eta_s = 0.0
            job.version += 1

    def _ingest(self, job: IngestJob, embedder: Embedder) -> None:

        readable: list[JobFile] = []
        with self._lock:
            for f in job.files:
                if kind_of(f.path) is None:
                    kinds = ", ".join(sorted(SUFFIXES))
                    f.fail(f"unsupported file type; rag reads {kinds}", "unsupported")
                else:
                    f.state = "ingesting"
                    readable.append(f)
            skipped = len(job.files) - len(readable)
            job.files_done = skipped
            job.version += 1
        if not readable:
            return
        store = self.writer_store(embedder)
        ids = {f.name: make_named_doc_id(job.collection, f.name) for f in readable}
        seen_chunks = 0

        def on_progress(p: Progress) -> None:
            nonlocal seen_chunks
            record_ingest_chunks(p.chunks - seen_chunks)
            seen_chunks = p.chunks
            self._update(
                job,
                stage=p.stage,
                message="",
                files_done=skipped + p.files_done,
                chunks=p.chunks,
                eta_s=p.eta_s,
            )

        def on_wait(message: str) -> None:
            self._update(job, stage="waiting", message=message)

        # Hold the writer lock across before/after so both views are of this job's write.
        with store.writer(on_wait):
            before = store.documents(job.collection)
            report = run_ingest(
                [f.path for f in readable],
                collection=job.collection,
                chunking=self.settings.chunking,
                embedder=embedder,
                store=store,
                batch_size=self.settings.embedding.batch_size,
                on_progress=on_progress,
                ingest=self.settings.ingest,
                on_wait=on_wait,
                names={f.path: f.name for f in readable},
                originals=self.originals,
            )
            after = store.documents(job.collection)
        failures = {row["path"]: row for row in report.failed}
        with self._lock:
            for f in readable:
                doc = after.get(ids[f.name])
                if f.name in failures:
                    row = failures[f.name]
                    # Parser messages may name the stored file; the client knows its own name.
                    error = row["error"].replace(str(f.path), f.name).replace(f.path.name, f.name)
                    f.fail(error, row["reason"])
                elif doc is None:
                    f.fail("not written to the index", "store")
                elif Path(doc.path) == f.path.resolve():
                    f.state = "indexed"
                else:
                    f.state = "unchanged"
            job.report = report.to_json()
            job.version += 1
        for f in readable:
            previous = before.get(ids[f.name])
            if f.state == "indexed" and previous is not None:
                self.remove_upload(previous)  # the replaced version's stored upload, if any

    def original_of(self, doc: StoredDocument, kept: set[str] | None = None) -> Path | None:
        """The file a document was read from, as kept by the service; None when there is
        none. `kept` is Originals.hashes(), when a listing asks for many documents."""
        listed = kept is None or doc.doc_hash in kept
        if listed and (path := self.originals.path(doc.doc_hash)):
            return path
        upload = stored_upload(doc.path, self.settings.storage.data_path)
        return upload if upload is not None and upload.is_file() else None

    def remove_upload(self, doc: StoredDocument) -> None:
        """Delete a document's stored upload, if it is one (never a file outside uploads/).

        Uploads were kept there, under the document's path, before originals were kept by
        content; a data dir from then still has them.
        """
        path = stored_upload(doc.path, self.settings.storage.data_path)
        if path is not None:
            path.unlink(missing_ok=True)


def _runner(request: Request[Any, Any, Any]) -> JobRunner:
    return request.app.state.jobs


@get(
    "/api/jobs/{job_id:str}",
    dependencies=AUTH_ONLY,
    summary="An upload job: its state, progress and each file's fate",
)
async def job_status(request: Request[Any, Any, Any], job_id: str, caller: Caller) -> dict:
    runner = _runner(request)
    return runner.snapshot(runner.find(job_id, caller))[1]


@get(
    "/api/jobs/{job_id:str}/events",
    dependencies=AUTH_ONLY,
    summary="An upload job's progress as server-sent events: `progress` …, then `done`",
)
async def job_events(
    request: Request[Any, Any, Any], job_id: str, caller: Caller
) -> ServerSentEvent:
    runner = _runner(request)
    job = runner.find(job_id, caller)
    return ServerSentEvent(_watch(runner, job))


async def _watch(runner: JobRunner, job: IngestJob) -> AsyncIterator[ServerSentEventMessage]:
    seen = -1
    quiet_since = time.monotonic()
    # A shutdown ends the stream (the page's EventSource reconnects to the next server).
    while not runner.stopping.is_set():
        version, body, finished = runner.snapshot(job)
        if version != seen or finished:
            seen = version
            quiet_since = time.monotonic()
            event = "done" if finished else "progress"
            yield ServerSentEventMessage(event=event, data=json.dumps(body))
            if finished:
                return
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ServerSentEventMessage(comment="waiting")
        await asyncio.sleep(WATCH_INTERVAL_S)

"""Ingest a batch: discover files, skip unchanged ones, parse, chunk, embed, write.

Files are parsed in bounded child processes (ingest/worker.py) while the parent embeds what
is already parsed. Parsed documents are pooled until `ingest.flush_chunks` chunks wait, then
embedded together sorted by length (similar lengths pad least) and written in one commit, so
many small files cost few commits and a crash leaves every document either wholly old or
wholly new. The whole run holds the index's writer lock.

What is read is decided first, for every path, without reading anything (ingest/discovery.py);
a file's hash is taken only from a regular file of bounded size, and each file's text and
chunks stay within the per-file budget (ingest/budget.py) or that file alone fails.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.budget import TextBudget
from ingest.chunker import MAX_CHARS_PER_TOKEN, Window, make_chunks
from ingest.discovery import Entry, Found, located, open_regular, size_bytes
from ingest.ocr import OcrOptions
from ingest.parsers import ParsedDocument
from ingest.report import IngestReport, ProgressMeter, no_text_message
from ingest.worker import Limits, Outcome, ParsePool
from rag.config import ChunkingSettings, IngestSettings
from rag.embed.embedder import Embedder
from rag.errors import ParseError, RagError, StoreError
from rag.index.originals import Originals
from rag.index.schema import DocumentWrite
from rag.index.store import Store, StoredDocument
from rag.records import Chunk

# Part of every document's stored fingerprint: bump it when parsing or chunking changes so the
# next ingest redoes files whose bytes did not change.
PIPELINE_VERSION = "3"
# Appended to the fingerprint of a document whose scanned pages were not all OCR'd.
INCOMPLETE = "/ocr-incomplete"
# Texts per embed() call inside a flush: one progress update each, and a chance to start the
# next parse while the model works.
EMBED_SLICE_BATCHES = 4


def display_source(path: Path) -> str:
    """The name citations show: relative to the working directory when inside it."""
    where = located(path)
    rel = os.path.relpath(where, Path.cwd())
    return str(where) if rel.startswith("..") else rel


def make_doc_id(collection: str, path: Path) -> str:
    """The id of a file's document: by its path, a link's own, its folder resolved."""
    return hashlib.sha256(f"{collection}\0{located(path)}".encode()).hexdigest()[:24]


def make_named_doc_id(collection: str, name: str) -> str:
    """The id of a document known by name (an upload), not by where its file lies."""
    return hashlib.sha256(f"{collection}\0name\0{name}".encode()).hexdigest()[:24]


def pipeline_fingerprint(window: Window, ocr: OcrOptions | None = None) -> str:
    """Stored with every chunk: a change of code, chunk sizes or OCR settings re-ingests
    unchanged files (turning OCR on must read the scans already indexed without it)."""
    ocr = ocr or OcrOptions()
    return f"{PIPELINE_VERSION}/{window.budget}/{window.overlap}/{ocr.mode}:{ocr.languages}"


def embed_sorted(
    embedder: Embedder,
    texts: list[str],
    batch_size: int,
    between: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed `texts` in slices of similar length; `between(n)` runs after each n texts."""
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    step = batch_size * EMBED_SLICE_BATCHES
    for start in range(0, len(order), step):
        part = order[start : start + step]
        vectors[part] = embedder.embed_documents([texts[i] for i in part], batch_size=batch_size)
        if between:
            between(len(part))
    return vectors


@dataclass(frozen=True, slots=True)
class FileJob:
    """A file that needs parsing and embedding: what its write and its report entry need."""

    path: Path  # as found, for names and messages
    source: str
    doc_id: str
    size_bytes: int
    previous: StoredDocument | None
    target: Path  # the regular file to read
    location: Path  # the path recorded with the document


@dataclass
class ParsedFile:
    job: FileJob
    chunks: list[Chunk]
    doc_hash: str
    # Scanned pages OCR could not read: the document is stored under a fingerprint the next
    # ingest does not match, so it tries them again (after Tesseract is installed, say).
    incomplete: bool = False


class IngestRun:
    """One ingest's state: the plan (what to skip), the report and progress, the writes.

    `ingest()` parses and embeds here; ingest/distributed.py does that part on Ray and
    hands back to `plan`, `accept`, `parse_failed` and `write`.
    """

    def __init__(
        self,
        collection: str,
        chunking: ChunkingSettings,
        settings: IngestSettings,
        embedder: Embedder,
        store: Store,
        batch_size: int,
        *,
        meter: ProgressMeter,
        report: IngestReport,
        names: Mapping[Path, str] | None = None,
        originals: Originals | None = None,
    ) -> None:
        self.collection = collection
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.batch_size = batch_size
        self.window = Window.fit(embedder, chunking.chunk_tokens, chunking.overlap_tokens)
        ocr = OcrOptions(
            settings.ocr,
            settings.ocr_languages,
            settings.ocr_seconds_per_page,
            settings.ocr_max_pages,
        )
        self.pipeline = pipeline_fingerprint(self.window, ocr)
        self.stored = store.documents(collection)
        self.report = report
        self.meter = meter
        self.pending: list[ParsedFile] = []
        self.jobs: dict[int, FileJob] = {}
        self.wrote = False
        self.names: dict[Path, str] = dict(names or {})
        self.originals = originals
        # Hashes whose originals this run may have left unreferenced: replaced, removed, or
        # kept for a write that failed.
        self.released: set[str] = set()
        self.limits = Limits(
            timeout_s=settings.parse_timeout_s,
            memory_bytes=settings.parse_memory_mb * 2**20,
            max_file_bytes=settings.max_file_mb * 2**20,
            budget=TextBudget(
                settings.max_text_chars_per_page,
                settings.max_chunks_per_file,
                settings.max_chunks_per_kib,
                self.window.budget * MAX_CHARS_PER_TOKEN,
            ),
            ocr=ocr,
        )
        # Pages OCR'd so far by each file still being parsed (progress before its result).
        self.ocr_running: dict[int, int] = {}

    def remove_gone(self, roots: list[Path], found: Found) -> None:
        """Remove the documents under `roots` that this run does not read: files gone,
        now hidden, now links leaving the folder. Under a folder that could not be listed
        nothing is known to be gone, and a file that fails to read keeps its document."""
        folders = [str(r.resolve()) for r in roots if r.is_dir()]
        named = {str(located(r)) for r in roots} | {str(r.resolve()) for r in roots}
        keep = {str(e.location) for e in found.files}
        keep |= {str(located(path)) for path, _, _ in found.failed}
        unlisted = [str(d) for d in found.unlisted]

        def under(path: str, folder: str) -> bool:
            return path.startswith(folder.rstrip(os.sep) + os.sep)

        gone = [
            doc
            for doc in self.stored.values()
            if doc.path
            and (doc.path in named or any(under(doc.path, f) for f in folders))
            and doc.path not in keep
            and not any(under(doc.path, d) for d in unlisted)
        ]
        if not gone:
            return
        self.store.delete_documents(self.collection, [d.doc_id for d in gone])
        self.wrote = True
        self.report.removed = len(gone)
        self.released.update(d.doc_hash for d in gone)
        for doc in gone:
            del self.stored[doc.doc_id]

    def ingest(self, files: list[Entry]) -> None:
        with ParsePool(self.settings.parse_workers, self.limits, self.ocr_progress) as pool:
            for key, entry in enumerate(files):
                if job := self.plan(key, entry):
                    pool.submit_file(key, job.target, job.path)
                # Keep parsing a few files ahead of embedding, not the whole corpus.
                while pool.pending > pool.workers + 1:
                    self._take(pool, pool.collect(None))
                self._take(pool, pool.collect(0.0))
            while pool.pending:
                self._take(pool, pool.collect(None))
            self._flush(pool)

    def plan(self, key: int, entry: Entry) -> FileJob | None:
        """Skip `entry` if unchanged (or unusable, reported); else the job, kept as jobs[key]."""
        path = entry.path
        name = self.names.get(path)
        source = name or display_source(path)
        self.meter.emit("scanning", source)
        try:
            size, doc_hash = _hash_file(entry.target, self.limits.max_file_bytes)
        except ParseError as e:
            self.meter.work_total -= size_bytes(entry.target)
            message = e.message.replace(f"{entry.target}: ", "").replace(f" {entry.target}", "")
            self._failed(source, message, e.reason)
            return None
        doc_id = (
            make_named_doc_id(self.collection, name)
            if name
            else make_doc_id(self.collection, entry.location)
        )
        previous = self.stored.get(doc_id)
        if previous and (previous.doc_hash, previous.pipeline) == (doc_hash, self.pipeline):
            if self.originals and not self.originals.path(doc_hash):
                # Ingested while none were kept: keep it now (if that fails, its citations
                # show their passage alone, as before).
                self._keep(entry.target, doc_hash)
            self.report.unchanged += 1
            self.meter.files_done += 1
            self.meter.work_total -= size
            self.meter.emit("scanning", source)
            return None
        self.meter.start_work()
        job = FileJob(path, source, doc_id, size, previous, entry.target, entry.location)
        self.jobs[key] = job
        return job

    def ocr_progress(self, key: int, pages: int) -> None:
        """A file being parsed goes on to OCR another page, `pages` read so far."""
        job = self.jobs.get(key)
        self.meter.ocr_pages += pages - self.ocr_running.get(key, 0)
        self.ocr_running[key] = pages
        self.meter.emit("ocr", job.source if job else "")

    def _take(self, pool: ParsePool, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            job = self.jobs.pop(outcome.key)
            # The file's result counts its OCR'd pages below, in accept().
            self.meter.ocr_pages -= self.ocr_running.pop(outcome.key, 0)
            if outcome.failed:
                self.parse_failed(job, outcome)
                continue
            parsed: ParsedDocument = outcome.value
            chunks = self.chunk(job, parsed)
            if chunks is None:
                continue
            if self.accept(job, parsed, chunks) is None:
                continue
            self.pending.append(ParsedFile(job, chunks, parsed.doc_hash, bool(parsed.ocr_failed)))
            self.meter.emit("parsing", job.source)
            if sum(len(p.chunks) for p in self.pending) >= self.settings.flush_chunks:
                self._flush(pool)

    def chunk(self, job: FileJob, parsed: ParsedDocument) -> list[Chunk] | None:
        """The parsed file's chunks, or None (reported) when they are over its budget."""
        budget = self.limits.budget
        allowed, _ = budget.max_chunks(job.size_bytes)
        chunks = make_chunks(
            job.doc_id, job.source, parsed.sections, self.embedder, self.window, allowed
        )
        try:
            budget.check_chunks(str(job.path), len(chunks), job.size_bytes)
        except ParseError as e:
            self.parse_failed(job, Outcome(None, None, e.reason, e.message))
            return None
        return chunks

    def parse_failed(self, job: FileJob, outcome: Outcome) -> None:
        self.meter.work_done += job.size_bytes
        # Parsers name the file as they were given it; the report has its own path.
        message = outcome.message.removeprefix(f"{job.path}: ")
        self._failed(job.source, message, outcome.reason)

    def accept(
        self, job: FileJob, parsed: ParsedDocument, chunks: list[Chunk]
    ) -> list[Chunk] | None:
        """Count a parsed file's pages; its chunks, or None (reported) when it has none."""
        self.report.pages += parsed.pages
        self.meter.pages += parsed.pages
        self.report.ocr_pages += len(parsed.ocr_pages)
        self.meter.ocr_pages += len(parsed.ocr_pages)
        self.report.tables += parsed.tables
        if parsed.empty_pages:
            self.report.empty_pages.append({"path": job.source, "pages": parsed.empty_pages})
        self.report.unread(job.source, parsed.ocr_failed)
        if chunks:
            return chunks
        self.meter.work_done += job.size_bytes
        # "ocr": scanned pages that OCR could not read (the message says why), else no_text.
        message = no_text_message(parsed.empty_pages, parsed.ocr_pages, parsed.ocr_failed)
        self._failed(job.source, message, "ocr" if parsed.ocr_failed else "no_text")
        return None

    def _flush(self, pool: ParsePool) -> None:
        docs, self.pending = self.pending, []
        if not docs:
            return
        texts = [c.text for d in docs for c in d.chunks]
        total_bytes = sum(d.job.size_bytes for d in docs)
        base_bytes = self.meter.work_done
        arrived: list[Outcome] = []

        def between(n: int) -> None:
            self.meter.chunks += n
            self.meter.work_done += total_bytes * n / len(texts)
            self.meter.emit("embedding", docs[0].job.source if len(docs) == 1 else "")
            # Start the next parses while the model works; their results wait for us.
            arrived.extend(pool.collect(0.0))

        vectors = embed_sorted(self.embedder, texts, self.batch_size, between)
        self.meter.work_done = base_bytes + total_bytes
        self.write(docs, vectors)
        if arrived:
            self._take(pool, arrived)

    def write(self, docs: list[ParsedFile], vectors: np.ndarray) -> None:
        """Commit `docs` (their chunks' vectors in order, already counted as embedded) at once."""
        writes: list[DocumentWrite] = []
        kept: list[ParsedFile] = []
        offset = 0
        for d in docs:
            count = len(d.chunks)
            part = vectors[offset : offset + count]
            offset += count
            if not self._keep_original(d):
                self.meter.chunks -= count
                continue
            kept.append(d)
            writes.append(
                DocumentWrite(
                    d.job.doc_id,
                    d.doc_hash,
                    self.pipeline + (INCOMPLETE if d.incomplete else ""),
                    str(d.job.location),
                    d.chunks,
                    part,
                )
            )
        self.meter.emit("writing")
        try:
            self.store.write_documents(self.collection, writes)
        except RagError as e:
            self.meter.chunks -= sum(len(d.chunks) for d in kept)
            self.released.update(d.doc_hash for d in kept)
            for d in kept:
                self.report.fail(d.job.source, e.message, "store")
        else:
            self.wrote = self.wrote or bool(writes)
            for d in kept:
                if d.job.previous:
                    self.report.updated += 1
                    self.released.add(d.job.previous.doc_hash)
                else:
                    self.report.added += 1
                self.report.chunks += len(d.chunks)
        self.meter.files_done += len(kept)
        self.meter.emit("writing")

    def _keep_original(self, d: ParsedFile) -> bool:
        """Keep the file's bytes before the commit that refers to them (rag.index.originals);
        False, reported as the file's failure, when they cannot be kept."""
        error = self._keep(d.job.target, d.doc_hash)
        if error is not None:
            message = error.message.replace(f"{d.job.target}: ", "")
            self._failed(d.job.source, message, getattr(error, "reason", "store"))
        return error is None

    def _keep(self, target: Path, doc_hash: str) -> RagError | None:
        if self.originals is None or not self.originals.keep_new:
            return None
        limit = self.limits.max_file_bytes
        try:
            with open_regular(target, limit) as (f, _):
                self.originals.keep(f, doc_hash, limit)
        except (ParseError, StoreError) as e:
            return e
        return None

    def _failed(self, source: str, message: str, reason: str) -> None:
        self.report.fail(source, message, reason)
        self.meter.files_done += 1
        self.meter.emit("parsing", source)


def _hash_file(path: Path, max_bytes: int) -> tuple[int, str]:
    """(size, sha256) of a regular file of at most `max_bytes`; nothing else is read."""
    digest = hashlib.sha256()
    with open_regular(path, max_bytes) as (f, size):
        left = size
        while left > 0 and (block := f.read(min(left, 1 << 20))):
            digest.update(block)
            left -= len(block)
    return size, digest.hexdigest()

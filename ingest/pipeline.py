"""Ingest a batch: discover files, skip unchanged ones, parse, chunk, embed, write per document."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.chunker import load_encoding, split_text
from ingest.parsers import parser_for
from rag.config import ChunkingSettings
from rag.embedder import Embedder
from rag.errors import ParseError, RagError
from rag.records import Chunk, Section
from rag.store import Store

# Part of every document's stored fingerprint: bump it when parsing or chunking changes so the
# next ingest redoes files whose bytes did not change.
PIPELINE_VERSION = "1"


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0
    # Files found but of a kind no parser reads.
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Progress:
    files_done: int
    files_total: int
    chunks: int
    current: str


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Return (readable files, unsupported files) under the given files and directories."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise RagError(f"{path} does not exist")
        if path.is_file():
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    readable = [p for p in found if parser_for(p)]
    return readable, [p for p in found if not parser_for(p)]


def display_source(path: Path) -> str:
    """The name citations show: relative to the working directory when inside it."""
    rel = os.path.relpath(path.resolve(), Path.cwd())
    return str(path.resolve()) if rel.startswith("..") else rel


def make_doc_id(collection: str, path: Path) -> str:
    return hashlib.sha256(f"{collection}\0{path.resolve()}".encode()).hexdigest()[:24]


def make_chunks(
    doc_id: str, source: str, sections: list[Section], settings: ChunkingSettings
) -> list[Chunk]:
    encoding = load_encoding(settings.encoding)
    chunks: list[Chunk] = []
    for section in sections:
        for span in split_text(
            section.text, encoding, settings.chunk_tokens, settings.overlap_tokens
        ):
            text = section.text[span.char_start : span.char_end]
            if not text.strip():
                continue
            index = len(chunks)
            digest = hashlib.sha256(f"{doc_id}\0{index}\0{text}".encode()).hexdigest()[:24]
            chunks.append(
                Chunk(
                    chunk_id=digest,
                    doc_id=doc_id,
                    source=source,
                    page=section.page,
                    heading=section.heading,
                    text=text,
                    char_start=section.char_start + span.char_start,
                    char_end=section.char_start + span.char_end,
                    index=index,
                )
            )
    return chunks


def run_ingest(
    paths: Iterable[Path],
    *,
    collection: str,
    chunking: ChunkingSettings,
    embedder: Embedder,
    store: Store,
    batch_size: int = 32,
    on_progress: Callable[[Progress], None] | None = None,
) -> IngestReport:
    started = time.perf_counter()
    files, unsupported = discover(paths)
    report = IngestReport(skipped=[display_source(p) for p in unsupported])
    stored = store.documents(collection)
    for done, path in enumerate(files):
        source = display_source(path)
        if on_progress:
            on_progress(Progress(done, len(files), report.chunks, source))
        try:
            outcome = _ingest_file(
                path, source, collection, chunking, embedder, store, stored, batch_size
            )
        except RagError as e:
            report.failed.append({"path": source, "error": e.message})
            continue
        if outcome is None:
            report.unchanged += 1
            continue
        kind, chunk_count = outcome
        setattr(report, kind, getattr(report, kind) + 1)
        report.chunks += chunk_count
    if on_progress:
        on_progress(Progress(len(files), len(files), report.chunks, ""))
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _ingest_file(
    path: Path,
    source: str,
    collection: str,
    chunking: ChunkingSettings,
    embedder: Embedder,
    store: Store,
    stored: dict[str, Any],
    batch_size: int,
) -> tuple[str, int] | None:
    """Ingest one file; return ("added" | "updated", chunks), or None when unchanged."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParseError(f"cannot read {source}: {e.strerror}") from e
    doc_id = make_doc_id(collection, path)
    doc_hash = hashlib.sha256(data).hexdigest()
    previous = stored.get(doc_id)
    if previous and (previous.doc_hash, previous.pipeline) == (doc_hash, PIPELINE_VERSION):
        return None
    parse = parser_for(path)
    assert parse is not None  # discover() only returns files with a parser
    chunks = make_chunks(doc_id, source, parse(path), chunking)
    if not chunks:
        raise ParseError(f"{source}: no extractable text (a scan or an empty file?)")
    vectors = embedder.embed_documents([c.text for c in chunks], batch_size=batch_size)
    store.replace_document(collection, doc_id, doc_hash, PIPELINE_VERSION, chunks, vectors)
    return ("updated" if previous else "added"), len(chunks)

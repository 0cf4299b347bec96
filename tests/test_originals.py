"""Kept originals: one copy per distinct content, gone when no document refers to it."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from ingest.run import run_ingest
from rag.config import ChunkingSettings
from rag.embed.embedder import Embedder
from rag.errors import StoreError
from rag.index.originals import Originals, remove_documents
from rag.index.store import Store, open_store

NOTES = b"# Badges\n\nVisitor badges are collected at the Nimbus desk on floor 3.\n"
RUNBOOK = b"# Ferry\n\nThe harbor ferry leaves at nine from pier 4.\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ingest(paths: list[Path], store: Store, embedder: Embedder, originals: Originals, **kw):
    return run_ingest(
        paths,
        collection=kw.pop("collection", "default"),
        chunking=ChunkingSettings(),
        embedder=embedder,
        store=store,
        originals=originals,
        **kw,
    )


def _kept(originals: Originals) -> set[str]:
    return set(os.listdir(originals.directory)) if originals.directory.is_dir() else set()


@pytest.fixture
def index(tmp_path: Path, embedder: Embedder) -> tuple[Store, Originals, Path]:
    data = tmp_path / "data"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_bytes(NOTES)
    (docs / "ferry.md").write_bytes(RUNBOOK)
    return open_store(data, embedder.name, embedder.dim), Originals(data), docs


def test_originals_are_kept_once_by_content_and_go_with_the_last_document(
    index: tuple[Store, Originals, Path], embedder: Embedder
) -> None:
    store, originals, docs = index
    (docs / "copy-of-notes.md").write_bytes(NOTES)
    report = _ingest([docs], store, embedder, originals)
    assert (report.added, report.failed) == (3, [])
    # Three documents, two distinct contents: two files, each the bytes it is named by.
    assert _kept(originals) == {_sha(NOTES), _sha(RUNBOOK)}
    assert originals.path(_sha(NOTES)).read_bytes() == NOTES
    assert (originals.directory.stat().st_mode & 0o777) == 0o700
    # The same bytes in another collection share the file too.
    _ingest([docs / "notes.md"], store, embedder, originals, collection="other")
    assert _kept(originals) == {_sha(NOTES), _sha(RUNBOOK)}

    def named(name: str):
        return lambda d: Path(d.source).name == name

    remove_documents(store, originals, "default", named("notes.md"))
    remove_documents(store, originals, "default", named("copy-of-notes.md"))
    assert _sha(NOTES) in _kept(originals)  # "other" still refers to it
    docs_gone, _ = remove_documents(store, originals, "other", named("notes.md"))
    assert len(docs_gone) == 1 and _kept(originals) == {_sha(RUNBOOK)}


def test_new_bytes_replace_the_original_and_unchanged_files_get_theirs_late(
    index: tuple[Store, Originals, Path], embedder: Embedder
) -> None:
    store, originals, docs = index
    off = Originals(originals.directory.parent, keep_new=False)
    _ingest([docs], store, embedder, off)
    assert _kept(originals) == set()  # storage.keep_originals = false: none kept
    # Turned on: an unchanged file is not re-ingested, but its original is kept now.
    report = _ingest([docs], store, embedder, originals)
    assert report.unchanged == 2 and _kept(originals) == {_sha(NOTES), _sha(RUNBOOK)}

    changed = NOTES.replace(b"floor 3", b"floor 5")
    (docs / "notes.md").write_bytes(changed)
    assert _ingest([docs], store, embedder, originals).updated == 1
    assert _kept(originals) == {_sha(changed), _sha(RUNBOOK)}
    # A file gone from the folder goes from the index (sync) with its original.
    (docs / "ferry.md").unlink()
    assert _ingest([docs], store, embedder, originals, sync=True).removed == 1
    assert _kept(originals) == {_sha(changed)}


def test_an_original_that_cannot_be_kept_fails_its_file_alone(
    index: tuple[Store, Originals, Path], embedder: Embedder
) -> None:
    store, originals, docs = index
    originals.directory.parent.mkdir(parents=True, exist_ok=True)
    originals.directory.write_text("not a directory")  # every copy into it fails
    report = _ingest([docs], store, embedder, originals)
    assert report.added == 0 and len(report.failed) == 2
    assert all("cannot keep the original" in f["error"] for f in report.failed)
    assert all("storage.keep_originals = false" in f["error"] for f in report.failed)
    # Nothing refers to an original that is not there.
    assert store.documents("default") == {}


def test_an_original_must_hold_the_bytes_its_hash_names(tmp_path: Path) -> None:
    originals = Originals(tmp_path)
    with pytest.raises(StoreError, match="changed while it was ingested"):
        originals.keep(io.BytesIO(NOTES), _sha(RUNBOOK), len(NOTES))
    # Past the size the file had when it was read: refused, however it hashes.
    with pytest.raises(StoreError, match="changed while it was ingested"):
        originals.keep(io.BytesIO(NOTES), _sha(NOTES), len(NOTES) - 1)
    assert _kept(originals) == set()  # no copy left behind, not even a temporary one
    originals.keep(io.BytesIO(NOTES), _sha(NOTES), len(NOTES))
    assert _kept(originals) == {_sha(NOTES)}
    # Only hash names are ever paths: nothing else resolves, nothing else is deleted.
    assert originals.path("../../etc/passwd") is None and originals.path("nope") is None
    (originals.directory / "README").write_text("an operator's note")
    assert originals.prune(set()) == 1 and _kept(originals) == {"README"}

"""`rag maintain`: the schedule, what it reports, and erasure checked on the bytes on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import lancedb
import pytest

from ingest.run import run_ingest
from rag.config import ChunkingSettings
from rag.embed.embedder import Embedder
from rag.index.originals import Originals
from rag.index.store import open_store
from rag.index.upkeep import FTS_INDEX, VECTOR_INDEX
from rag.index.writelock import write_lock

from .conftest import RAG, SAMPLES, rag_env
from .corpus import write_corpus

# One sentence of each sample document, on one line of its file so it is one run of bytes.
ERASED = "Every full-time employee receives 27 days of paid vacation per year."
KEPT = "Welcome to Kestrel Harbor Systems! This checklist walks you through your first week."


def _rag(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAG), *args],
        env=rag_env(data, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _maintain(data: Path, *args: str, **env: str) -> dict[str, Any]:
    done = _rag(data, "maintain", "--json", *args, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _files_holding(root: Path, text: str) -> list[str]:
    """Every file under `root` whose bytes contain `text`."""
    needle = text.encode()
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    ]


def _table(data: Path) -> Any:
    name = (data / "active-table").read_text().strip() if (data / "active-table").exists() else ""
    return lancedb.connect(data / "lancedb").open_table(name or "chunks")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """An index of two sample documents among 60 small ones, in one fragment, with the
    originals of all of them kept."""
    root = tmp_path_factory.mktemp("maintain")
    docs = root / "docs"
    write_corpus(docs, count=60)
    for name in ("handbook.md", "onboarding.md"):
        shutil.copy(SAMPLES / name, docs / name)
    store = open_store(root / "data", embedder.name, embedder.dim)
    report = run_ingest(
        [docs],
        collection="default",
        chunking=ChunkingSettings(),
        embedder=embedder,
        store=store,
        originals=Originals(root / "data"),
    )
    assert (report.added, report.failed) == (62, [])
    return root


def test_delete_then_maintain_with_retention_0_leaves_no_text_on_disk(
    indexed: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(indexed / "data", data)
    # A vector index too (built from 10 rows on), so its rebuild is part of the erasure.
    erase = {"RAG_STORAGE_KEEP_VERSIONS_S": "0", "RAG_RETRIEVAL_VECTOR_INDEX_ROWS": "10"}
    # The text is stored as plain bytes, so a byte search can see it: the check below is
    # not vacuous. The document's kept original holds it too.
    assert _files_holding(data, ERASED) and _files_holding(data, KEPT)
    originals = data / "originals"
    assert len(_files_holding(originals, ERASED)) == 1 and _files_holding(originals, KEPT)

    removed = _rag(data, "docs", "rm", str(indexed / "docs" / "handbook.md"), **erase)
    assert removed.returncode == 0, removed.stderr
    # The removal deletes the original at once; it only masks the rows: the document's
    # text is still in a data file.
    assert _files_holding(originals, ERASED) == []
    assert _files_holding(data, ERASED)
    assert int(_table(data).list_versions()[-1]["metadata"]["total_deletion_file_rows"]) > 0

    report = _maintain(data, "--now", **erase)
    assert (report["ran"], report["erase"], report["rewrote"]) == (True, True, True)
    assert report["versions_after"] == 1 and report["versions_removed"] > 0
    # Not necessarily fewer bytes: the new vector index outweighs one document here.
    assert report["bytes_reclaimed"] == report["bytes_before"] - report["bytes_after"]

    assert _files_holding(data, ERASED) == []
    assert _files_holding(data, KEPT)  # the rest is all there
    assert _files_holding(originals, KEPT)
    store = open_store(data, None, 0)
    assert {p.name for p in originals.iterdir()} == store.doc_hashes()
    sources = {Path(d.source).name for d in store.documents("default").values()}
    assert "handbook.md" not in sources and len(sources) == 61
    table = _table(data)
    assert len(table.list_versions()) == 1
    assert {i.name for i in table.list_indices()} == {FTS_INDEX, VECTOR_INDEX}
    assert table.index_stats(FTS_INDEX).num_unindexed_rows == 0
    assert table.index_stats(VECTOR_INDEX).num_unindexed_rows == 0
    hits = table.search("checklist", query_type="fts").select(["source"]).limit(5).to_list()
    assert hits and all(h["source"].endswith("onboarding.md") for h in hits)
    assert sorted(p.name for p in (data / "lancedb").iterdir()) == [f"{table.name}.lance"]


def test_a_removal_is_never_an_erasure_even_with_retention_0(
    indexed: Path, tmp_path: Path, embedder: Embedder
) -> None:
    data = tmp_path / "data"
    shutil.copytree(indexed / "data", data)
    # What `rag serve` holds for DELETE /api/documents with storage.keep_versions_s = 0.
    store = open_store(data, embedder.name, embedder.dim, keep_versions_s=0)
    before = len(_table(data).list_versions())
    docs, chunks = store.remove_documents("default", lambda d: d.source.endswith("handbook.md"))
    assert [Path(d.source).name for d in docs] == ["handbook.md"] and chunks > 0
    # The versions from before the removal are still there to roll back to.
    assert len(_table(data).list_versions()) > before
    assert _files_holding(data, ERASED)


def test_maintain_runs_when_due_and_reports_what_it_reclaimed(
    indexed: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(indexed / "data", data)
    versions = len(_table(data).list_versions())
    time.sleep(1.1)  # the ingest's versions are now older than the 1 s retention below
    first = _maintain(data, RAG_STORAGE_KEEP_VERSIONS_S="1")
    assert (first["ran"], first["reason"], first["erase"]) == (True, "due", False)
    assert first["versions_before"] == versions > first["versions_after"]
    assert first["versions_removed"] == versions - first["versions_after"]
    assert first["bytes_reclaimed"] == first["bytes_before"] - first["bytes_after"] > 0
    assert first["fragments_after"] == 1 and first["rows"] > 0
    assert json.loads((data / "maintenance.json").read_text())["last"]["ran"] is True

    again = _maintain(data)
    assert (again["ran"], again["reason"]) == (False, "not due")
    assert 0 < again["next_due_s"] <= 24 * 3600
    assert again["last_run_s"] == pytest.approx(time.time(), abs=60)
    assert _maintain(data, "--now")["reason"] == "forced"
    never = _maintain(data, RAG_MAINTENANCE_INTERVAL_H="0")
    assert (never["ran"], never["next_due_s"]) == (False, None)

    text = _rag(data, "maintain", "--now")
    assert text.returncode == 0 and " versions, " in text.stdout and "reclaimed" in text.stdout


def test_maintain_waits_for_a_writer_and_is_still_due_after_giving_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "lancedb").mkdir(parents=True)
    with write_lock(data, wait_s=0):
        busy = _rag(data, "maintain", RAG_STORAGE_LOCK_WAIT_S="0")
    assert busy.returncode == 1
    assert f"is being written by pid {os.getpid()}" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert _maintain(data)["reason"] == "no index"  # still due: the failed pass was not recorded


def test_maintain_deletes_the_originals_no_document_refers_to(
    indexed: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(indexed / "data", data)
    originals = data / "originals"
    kept = {p.name for p in originals.iterdir()}
    assert kept == open_store(data, None, 0).doc_hashes() and len(kept) == 62
    # What a crash leaves: a copy made for a commit that never happened, and one unfinished.
    orphan = "0" * 64
    (originals / orphan).write_text(ERASED)
    (originals / ".3f2a.tmp").write_text(ERASED)

    report = _maintain(data, "--now")
    assert report["originals_removed"] == 1
    assert {p.name for p in originals.iterdir()} == kept
    assert report["originals_bytes"] == sum(p.stat().st_size for p in originals.iterdir())
    # storage.keep_originals = false: the next pass deletes those kept before too.
    off = _maintain(data, "--now", RAG_STORAGE_KEEP_ORIGINALS="false")
    assert off["originals_removed"] == 62 and off["originals_bytes"] == 0
    assert list(originals.iterdir()) == []

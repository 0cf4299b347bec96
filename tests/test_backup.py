"""`rag backup` during a running `rag ingest`, then `rag restore`: real processes, real index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pytest

from rag.accounts.apikeys import add_key
from rag.embed.embedder import Embedder
from rag.index.store import open_store

from .conftest import RAG, ROOT, rag_env
from .corpus import write_corpus

DOCS = 40
# Small commits, so the ingest is many versions long and the backup lands inside it.
ENV = {"RAG_INGEST_FLUSH_CHUNKS": "4"}
QUERIES = ("customs invoice audit", "vessel anchor radio beacon", "warehouse pallet forklift")


def _rag(cwd: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAG), *args],
        cwd=cwd,
        env=rag_env(data, **ENV),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _versions(data: Path) -> int:
    try:
        return len(os.listdir(data / "lancedb" / "chunks.lance" / "_versions"))
    except FileNotFoundError:
        return 0


def _rows(table: Any) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    rows = table.search().limit(None).to_arrow().to_pylist()
    vectors = {r["chunk_id"]: np.array(r.pop("vector")) for r in rows}
    return sorted(rows, key=lambda r: r["chunk_id"]), vectors


def _chunks_per_doc(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["doc_id"]] = counts.get(row["doc_id"], 0) + 1
    return counts


@pytest.fixture(scope="module")
def during_ingest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A backup taken while `rag ingest` runs, the finished source and the backup's report."""
    root = tmp_path_factory.mktemp("backup")
    write_corpus(root / "docs", count=DOCS)
    source = root / "source"
    add_key(source, "reader", ["default"])  # settings the backup must carry
    ingest = subprocess.Popen(
        [str(RAG), "ingest", "docs", "--json"],
        cwd=root,
        env=rag_env(source, **ENV),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _versions(source) < 4 and time.monotonic() < deadline:
            assert ingest.poll() is None, ingest.communicate()
            time.sleep(0.05)
        backup = _rag(root, source, "backup", str(root / "backup"), "--json")
    finally:
        out, err = ingest.communicate(timeout=300)
    assert backup.returncode == 0, backup.stderr
    assert ingest.returncode == 0, err
    assert json.loads(out)["added"] == DOCS
    return {
        "root": root,
        "source": source,
        "backup": root / "backup",
        "manifest": json.loads(backup.stdout),
    }


def test_backup_during_an_ingest_restores_a_consistent_store_with_the_same_hits(
    during_ingest: dict[str, Any], embedder: Embedder
) -> None:
    root, source, manifest = (
        during_ingest["root"],
        during_ingest["source"],
        during_ingest["manifest"],
    )
    final = lancedb.connect(source / "lancedb").open_table("chunks")
    # Taken mid-ingest: an earlier version than the finished one, with fewer documents.
    assert 0 < manifest["table_version"] < final.version
    assert 0 < manifest["rows"] < final.count_rows()

    restored = root / "restored"
    done = _rag(root, restored, "restore", str(during_ingest["backup"]), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == manifest["rows"]

    # The restored index is exactly the source at the backed-up version ...
    pinned = lancedb.connect(source / "lancedb").open_table("chunks")
    pinned.checkout(manifest["table_version"])
    restored_table = lancedb.connect(restored / "lancedb").open_table(manifest["table"])
    rows, vectors = _rows(restored_table)
    expected_rows, expected_vectors = _rows(pinned)
    assert rows == expected_rows
    assert vectors.keys() == expected_vectors.keys()
    for chunk_id, vector in vectors.items():
        np.testing.assert_array_equal(vector, expected_vectors[chunk_id])
    # ... every document in it is whole (as many chunks as when the ingest finished) ...
    complete = _chunks_per_doc(_rows(final)[0])
    for doc_id, count in _chunks_per_doc(rows).items():
        assert count == complete[doc_id], doc_id
    assert restored_table.list_versions()[-1]["version"] == restored_table.version
    assert restored_table.index_stats("text_idx").num_unindexed_rows == 0

    # ... and it answers searches with the same hits as the source at that version.
    store = open_store(restored, embedder.name, embedder.dim)
    for query in QUERIES:
        vector = embedder.embed_query(query)
        hits = [h.chunk_id for h in store.search("default", vector, 4)]
        expected = (
            pinned.search(vector.tolist(), vector_column_name="vector")
            .distance_type("cosine")
            .select(["chunk_id"])
            .limit(4)
            .to_list()
        )
        assert hits == [e["chunk_id"] for e in expected], query

    # The kept originals of exactly the backed-up documents came along, byte for byte, as
    # private as they were (the viewer shows citations in them).
    hashes = {r["doc_hash"] for r in rows}
    kept = restored / "originals"
    assert {p.name for p in kept.iterdir()} == hashes
    assert manifest["originals"] == len(hashes) and manifest["originals_bytes"] > 0
    for doc_hash in hashes:
        assert (kept / doc_hash).read_bytes() == (source / "originals" / doc_hash).read_bytes()
        assert (kept / doc_hash).stat().st_mode & 0o777 == 0o600
    assert len(list((source / "originals").iterdir())) == DOCS > len(hashes)

    # Settings came along: the API keys in the data dir and the config file in use.
    assert (restored / "keys.json").read_bytes() == (source / "keys.json").read_bytes()
    assert (restored / "keys.json").stat().st_mode & 0o777 == 0o600
    config = during_ingest["backup"] / "config.toml"
    assert config.read_bytes() == (ROOT / "config.toml").read_bytes()
    assert manifest["config"] == str(ROOT / "config.toml") and manifest["keys"] is True


def test_restore_refuses_to_overwrite_without_force_and_checks_the_manifest(
    during_ingest: dict[str, Any], tmp_path: Path
) -> None:
    root, backup = during_ingest["root"], during_ingest["backup"]
    target = tmp_path / "target"
    assert _rag(root, target, "restore", str(backup)).returncode == 0
    (target / "marker").write_text("left by the operator")

    refused = _rag(root, target, "restore", str(backup))
    assert refused.returncode == 1
    assert "already holds data; add --force" in refused.stderr
    assert (target / "marker").exists()
    forced = _rag(root, target, "restore", str(backup), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (target / "marker").exists()  # replaced whole, not merged
    assert open_store(target, None, 0).row_count() == during_ingest["manifest"]["rows"]
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # no temp dirs left

    tampered = tmp_path / "tampered"
    shutil.copytree(backup, tampered)
    manifest = json.loads((tampered / "backup.json").read_text())
    manifest["collections"]["default"] += 1
    (tampered / "backup.json").write_text(json.dumps(manifest))
    bad = _rag(root, tmp_path / "fresh", "restore", str(tampered))
    assert bad.returncode == 1
    assert "does not match its manifest" in bad.stderr
    assert not (tmp_path / "fresh").exists()
    # A backup that lost a kept original is refused too.
    shutil.rmtree(tampered)
    shutil.copytree(backup, tampered)
    next((tampered / "data" / "originals").iterdir()).unlink()
    lost = _rag(root, tmp_path / "fresh", "restore", str(tampered))
    assert lost.returncode == 1 and "kept originals" in lost.stderr, lost.stderr
    assert not (tmp_path / "fresh").exists()

    not_backup = _rag(root, tmp_path / "fresh", "restore", str(root / "docs"))
    assert not_backup.returncode == 1 and "is not a rag backup" in not_backup.stderr
    into_existing = _rag(root, during_ingest["source"], "backup", str(backup))
    assert into_existing.returncode == 2 and "not an empty directory" in into_existing.stderr

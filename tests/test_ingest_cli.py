"""`rag ingest` and `rag docs` as users run them: real processes, real kills, real locks."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from rag.index.writelock import write_lock

from .conftest import RAG, rag_env, stored_state
from .corpus import write_bad_inputs, write_corpus

# Small commits, so that a kill can land between, inside and after many of them.
ENV = {"RAG_INGEST_FLUSH_CHUNKS": "4"}
DOCS = 30


def _ingest(cwd: Path, data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAG), "ingest", "docs", "--json", *args],
        cwd=cwd,
        env=rag_env(data, **ENV, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _start(cwd: Path, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(RAG), "ingest", "docs", "--json"],
        cwd=cwd,
        env=rag_env(data, **ENV),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _versions(data: Path) -> int:
    try:
        return len(os.listdir(data / "lancedb" / "chunks.lance" / "_versions"))
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingest-cli")
    write_corpus(root / "docs", count=DOCS)
    return root


@pytest.fixture(scope="module")
def clean(workspace: Path) -> Path:
    """The index an uninterrupted run builds: what every other run must end up with."""
    data = workspace / "clean"
    done = _ingest(workspace, data)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["added"], report["failed"]) == (DOCS, [])
    return data


def test_kill_9_at_random_points_then_rerun_equals_a_clean_run(
    workspace: Path, clean: Path
) -> None:
    expected_rows, expected_vectors = stored_state(clean)
    commits = _versions(clean)
    rng = random.Random(20240611)
    killed_at: list[int] = []
    for trial in range(3):
        data = workspace / f"killed-{trial}"
        # Wait for a random number of commits (0: during start-up or parsing), then a
        # random moment more, and kill -9.
        target = rng.randint(0, commits)
        proc = _start(workspace, data)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _versions(data) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        killed_at.append(_versions(data))

        done = _ingest(workspace, data)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["failed"] == []
        assert report["added"] + report["updated"] + report["unchanged"] == DOCS
        rows, vectors = stored_state(data)
        assert rows == expected_rows, f"trial {trial} (killed at version {killed_at[-1]})"
        for chunk_id, vector in vectors.items():
            np.testing.assert_allclose(vector, expected_vectors[chunk_id], atol=1e-5)
    # The kills landed at different stages, not all before the first commit.
    assert max(killed_at) > 1


def test_two_concurrent_ingests_take_turns(workspace: Path, clean: Path) -> None:
    data = workspace / "concurrent"
    first, second = _start(workspace, data), _start(workspace, data)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    reports = sorted((json.loads(out) for out, _ in outputs), key=lambda r: r["added"])
    assert [(r["added"], r["unchanged"]) for r in reports] == [(0, DOCS), (DOCS, 0)]
    assert any("waiting for the index lock" in err for _, err in outputs)
    assert stored_state(data)[0] == stored_state(clean)[0]


def test_a_held_lock_makes_a_second_writer_exit_with_a_clear_message(workspace: Path) -> None:
    data = workspace / "locked"
    with write_lock(data, wait_s=0):
        done = _ingest(workspace, data, RAG_STORAGE_LOCK_WAIT_S="0")
    assert done.returncode == 1
    assert f"is being written by pid {os.getpid()}" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_inputs_exit_1_with_a_reason_per_file(tmp_path: Path) -> None:
    expected = write_bad_inputs(tmp_path / "docs")
    done = _ingest(tmp_path, tmp_path / "data")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    for key in ("added", "updated", "unchanged", "removed", "failed", "chunks", "seconds"):
        assert key in report
    assert {Path(f["path"]).name: f["reason"] for f in report["failed"]} == {
        name: reason for name, reason in expected.items() if reason
    }
    assert report["added"] == sum(1 for reason in expected.values() if not reason)


def test_docs_list_and_rm(workspace: Path, clean: Path) -> None:
    data = workspace / "docs-cmd"
    shutil.copytree(clean, data)

    def rag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RAG), "docs", *args],
            cwd=workspace,
            env=rag_env(data),
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = json.loads(rag("list", "--json").stdout)
    assert listed["collection"] == "default"
    sources = [d["source"] for d in listed["documents"]]
    assert sources == sorted(f"docs/{p.name}" for p in (workspace / "docs").iterdir())
    pdf = next(d for d in listed["documents"] if d["source"].endswith(".pdf"))
    assert pdf["pages"] == 3 and pdf["chunks"] >= 3

    removed = rag("rm", "docs/doc00.md", str(workspace / "docs" / "doc01.txt"))
    assert removed.returncode == 0, removed.stderr
    assert "removed 2 document(s)" in removed.stdout
    # The user's own files stay where they are; only the index forgets them.
    assert (workspace / "docs" / "doc00.md").exists()
    after = [d["source"] for d in json.loads(rag("list", "--json").stdout)["documents"]]
    assert after == sources[2:]

    missing = rag("rm", "docs/nope.md")
    assert missing.returncode == 1
    assert "not in collection 'default': docs/nope.md" in missing.stderr
    assert json.loads(rag("list", "--json", "--collection", "other").stdout)["documents"] == []


def test_docs_rm_deletes_the_file_the_service_stored_for_an_upload(tmp_path: Path) -> None:
    from web.uploads import uploads_path

    data = tmp_path / "data"
    stored = uploads_path(data) / "3f2a-notes.md"  # as the service names an upload
    stored.parent.mkdir(parents=True)
    stored.write_text("# Notes\n\nThe badge desk opens at eight.\n")
    env = rag_env(data)
    run = {"env": env, "capture_output": True, "text": True, "timeout": 300}
    assert subprocess.run([str(RAG), "ingest", str(stored)], **run).returncode == 0
    removed = subprocess.run([str(RAG), "docs", "rm", str(stored)], **run)
    assert removed.returncode == 0, removed.stderr
    assert "removed 1 document(s)" in removed.stdout
    assert not stored.exists()
    assert list((data / "originals").iterdir()) == []  # its kept original goes too

"""`rag ingest --ray` on a real local Ray cluster stores exactly what a local ingest stores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import RAG, SAMPLES, free_port, rag_env, stored_state

# Ray's start-up on two busy cores takes 5-30 s.
RAY_START_TIMEOUT_S = 120


def _session_processes(session: int) -> list[int]:
    """Live pids of one session: the cluster's (Ray renames its processes, not their session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        state, _ppid, _pgrp, sid = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster of 2 CPUs on loopback; yields its address; leaves no process."""
    # Unix socket paths are limited to ~107 bytes: pytest's tmp dirs are too deep.
    temp_dir = tempfile.mkdtemp(prefix="rag-ray-", dir="/tmp")
    port = free_port()
    log = Path(temp_dir) / "head.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                str(RAG.parent / "ray"),
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={temp_dir}",
                "--object-store-memory=100000000",
                "--disable-usage-stats",
                # In the foreground: SIGTERM to it stops the whole cluster.
                "--block",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + RAY_START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"ray did not start:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.monotonic() + 15
        # start_new_session: the head's pid is the session id of every process it started.
        while _session_processes(head.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leaked = _session_processes(head.pid)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leaked, f"Ray processes left running after the cluster stopped: {leaked}"


def _start_ingest(cwd: Path, data: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(RAG), "ingest", "docs", "--json", *args],
        cwd=cwd,
        env=rag_env(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, json.loads(out or "{}"), err


def test_ray_ingest_stores_what_a_local_ingest_stores(ray_head: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(SAMPLES, docs)
    # A file that fails to parse on a worker is reported as locally, and the rest go on.
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf\n")

    # Side by side: Ray's workers spend most of their start-up waiting, not computing.
    local_run = _start_ingest(tmp_path, tmp_path / "local")
    code, remote, err = _finish(_start_ingest(tmp_path, tmp_path / "ray", "--ray", ray_head))
    assert code == 1, err
    code, local, local_err = _finish(local_run)
    assert code == 1, local_err
    assert "Traceback" not in err

    assert (remote["added"], remote["chunks"]) == (4, local["chunks"])
    assert [f["path"] for f in remote["failed"]] == ["docs/broken.pdf"]
    for report in (local, remote):
        report.pop("seconds")
    assert remote == local

    local_rows, local_vectors = stored_state(tmp_path / "local")
    ray_rows, ray_vectors = stored_state(tmp_path / "ray")
    # chunk ids, texts, pages, headings, offsets, paths, hashes, pipeline: all of it.
    assert ray_rows == local_rows
    assert ray_vectors.keys() == local_vectors.keys()
    for chunk_id, vector in ray_vectors.items():
        np.testing.assert_allclose(vector, local_vectors[chunk_id], atol=1e-5)
    # The driver keeps the originals, as a local ingest does: one per stored document.
    kept = sorted(p.name for p in (tmp_path / "ray" / "originals").iterdir())
    assert kept == sorted(p.name for p in (tmp_path / "local" / "originals").iterdir())
    assert kept == sorted({row["doc_hash"] for row in ray_rows})

    code, again, err = _finish(_start_ingest(tmp_path, tmp_path / "ray", "--ray", ray_head))
    assert code == 1, err
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 4)
    assert again["failed"] == remote["failed"]
    assert stored_state(tmp_path / "ray")[0] == ray_rows


def test_an_unreachable_cluster_is_a_clear_usage_error(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [str(RAG), "ingest", str(SAMPLES), "--ray", address],
        env=rag_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"--ray {address}: no Ray head answers" in done.stderr
    assert "ray start --head" in done.stderr
    assert "Traceback" not in done.stderr

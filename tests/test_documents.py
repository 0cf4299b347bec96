"""The documents API over HTTP: upload as ingest jobs, list, remove, download, limits, CSRF."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from web.uploads import LOCK_FILE

from .conftest import FAST_LLM_ENV, ROOT, start_server, stop_server

# A keyless loopback server: scripts mark themselves with any key (see web/csrf.py).
SCRIPT = {"authorization": "Bearer unused"}
LIMITS = {
    "RAG_SERVER_UPLOAD_MAX_FILE_MB": "1",
    "RAG_SERVER_UPLOAD_MAX_FILES": "3",
    "RAG_SERVER_UPLOAD_MAX_REQUEST_MB": "2",
    "RAG_SERVER_MAX_INGEST_JOBS": "2",
}


@pytest.fixture(scope="module")
def docs(sample_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A copy of the sample index served with small upload limits; yields base URL and paths."""
    data = tmp_path_factory.mktemp("docs") / "data"
    shutil.copytree(sample_data_dir, data, ignore=shutil.ignore_patterns("*.log", "*.lock"))
    proc, base = start_server(data, **LIMITS, **FAST_LLM_ENV)
    try:
        yield {"base": base, "data": data}
    finally:
        stop_server(proc)


def _upload(
    base: str, files: list[tuple[str, bytes]], collection: str = "uploads"
) -> httpx.Response:
    parts = [("files", (name, body)) for name, body in files]
    return httpx.post(
        f"{base}/api/documents",
        params={"collection": collection},
        files=parts,
        headers=SCRIPT,
        timeout=60,
    )


def _wait(base: str, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/api/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


def _documents(base: str, collection: str = "uploads") -> dict[str, dict]:
    r = httpx.get(f"{base}/api/documents", params={"collection": collection}, timeout=30)
    r.raise_for_status()
    return {d["source"]: d for d in r.json()["documents"]}


def _uploads_dir(docs: dict) -> list[str]:
    """The uploads waiting in staging folders (each folder also holds its server's lock)."""
    path = docs["data"] / "uploads"
    return sorted(p.name for p in path.rglob("*") if p.is_file() and p.name != LOCK_FILE)


def _originals(docs: dict) -> set[str]:
    return {p.name for p in (docs["data"] / "originals").iterdir()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _corpus_text(chars: int, seed: int = 7) -> bytes:
    words = [
        "harbor",
        "kestrel",
        "ledger",
        "beacon",
        "quartz",
        "meadow",
        "lantern",
        "orbit",
        "cedar",
        "vault",
    ]
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        sentence = " ".join(rng.choice(words) for _ in range(12)).capitalize() + "."
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out).encode()


def test_an_upload_is_a_job_where_a_bad_file_fails_alone(docs: dict) -> None:
    base = docs["base"]
    good = b"# Badges\nVisitor badges are collected at the Nimbus desk on floor 3.\n"
    response = _upload(
        base, [("badges.md", good), ("broken.pdf", b"%PDF-1.4 not really"), ("tool.exe", b"MZ")]
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/jobs/{response.json()['id']}"
    job = _wait(base, response.json()["id"])
    assert job["state"] == "done"
    states = {f["name"]: (f["state"], f["reason"]) for f in job["files"]}
    assert states == {
        "badges.md": ("indexed", ""),
        "broken.pdf": ("failed", "malformed"),
        "tool.exe": ("failed", "unsupported"),
    }
    assert job["files_done"] == 3 and job["report"]["added"] == 1
    # The failed file's reason never names where the server stored it.
    assert "uploads" not in json.dumps(job["files"])

    listed = _documents(base)
    assert set(listed) == {"badges.md"} and listed["badges.md"]["downloadable"]
    hits = httpx.post(
        f"{base}/api/search",
        json={"query": "where are visitor badges collected", "collection": "uploads"},
        timeout=60,
    ).json()["hits"]
    assert hits[0]["source"] == "badges.md"
    # Only the indexed file is kept, as its original (named by its content); the staged
    # uploads are gone.
    samples = _originals(docs) - {_sha(good)}
    assert _sha(good) in _originals(docs) and _uploads_dir(docs) == []

    # The same bytes again: nothing is written and the second copy is not kept.
    again = _wait(base, _upload(base, [("badges.md", good)]).json()["id"])
    assert again["files"][0]["state"] == "unchanged"
    assert _originals(docs) == samples | {_sha(good)} and _uploads_dir(docs) == []
    # New bytes under the same name replace the document and its original.
    changed = good.replace(b"floor 3", b"floor 5")
    assert _wait(base, _upload(base, [("badges.md", changed)]).json()["id"])["report"]["updated"]
    assert _originals(docs) == samples | {_sha(changed)}
    doc = _documents(base)["badges.md"]
    original = httpx.get(
        f"{base}/api/documents/{doc['doc_id']}/source", params={"collection": "uploads"}
    )
    assert original.status_code == 200 and original.content == changed
    assert original.headers["content-type"] == "application/octet-stream"
    assert original.headers["content-disposition"].startswith("attachment")
    assert original.headers["x-content-type-options"] == "nosniff"

    removed = httpx.delete(
        f"{base}/api/documents", params={"collection": "uploads", "source": "badges.md"}
    )
    assert removed.status_code == 200 and removed.json()["removed"][0]["source"] == "badges.md"
    assert _documents(base) == {} and _originals(docs) == samples
    gone = httpx.delete(
        f"{base}/api/documents", params={"collection": "uploads", "source": "badges.md"}
    )
    assert gone.status_code == 404


def test_file_names_are_shown_never_used_as_paths(docs: dict) -> None:
    base = docs["base"]
    job = _wait(
        base,
        _upload(base, [("../../escape.md", b"# Escape\nThe ferry leaves at nine.\n")]).json()["id"],
    )
    assert job["files"][0]["state"] == "indexed"
    assert not (docs["data"].parent / "escape.md").exists()
    assert not (docs["data"] / "escape.md").exists()
    doc = _documents(base)["escape.md"]
    assert httpx.delete(
        f"{base}/api/documents/{doc['doc_id']}", params={"collection": "uploads"}
    ).json()["removed"] == [{"doc_id": doc["doc_id"], "source": "escape.md"}]


def test_documents_read_by_rag_ingest_are_downloadable_from_their_kept_original(
    docs: dict,
) -> None:
    base = docs["base"]
    listed = _documents(base, "default")
    pdf = listed["samples/incident-runbook.pdf"]
    assert pdf["pages"] == 3 and pdf["downloadable"]
    r = httpx.get(f"{base}/api/documents/{pdf['doc_id']}/source", params={"collection": "default"})
    assert r.status_code == 200
    assert r.content == (ROOT / "samples" / "incident-runbook.pdf").read_bytes()
    assert r.headers["content-security-policy"] == "sandbox; default-src 'none'"
    # A document whose original is not kept (ingested with storage.keep_originals = false).
    notes = (ROOT / "samples" / "release-notes.txt").read_bytes()
    (docs["data"] / "originals" / _sha(notes)).unlink()
    doc = _documents(base, "default")["samples/release-notes.txt"]
    assert not doc["downloadable"]
    r = httpx.get(f"{base}/api/documents/{doc['doc_id']}/source", params={"collection": "default"})
    assert r.status_code == 404 and "no kept original" in r.json()["error"]["message"]
    assert httpx.get(f"{base}/api/documents/nope/source").status_code == 404
    collections = httpx.get(f"{base}/api/collections").json()
    assert collections["default"] == "default" and "default" in collections["collections"]


def test_uploads_over_the_limits_are_413_and_store_nothing(docs: dict) -> None:
    base = docs["base"]
    before = _uploads_dir(docs)
    small = [(f"n{i}.txt", b"note") for i in range(4)]
    too_many = _upload(base, small)
    assert too_many.status_code == 413
    assert "server.upload_max_files = 3" in too_many.json()["error"]["message"]

    too_big = _upload(base, [("big.txt", b"x" * (1024 * 1024 + 10))])
    assert too_big.status_code == 413
    assert "big.txt" in too_big.json()["error"]["message"]
    assert "server.upload_max_file_mb = 1" in too_big.json()["error"]["message"]

    started = time.monotonic()
    body = _upload(
        base, [("a.txt", b"y" * 900_000), ("b.txt", b"y" * 900_000), ("c.txt", b"y" * 900_000)]
    )
    assert body.status_code == 413
    assert "server.upload_max_request_mb = 2" in body.json()["error"]["message"]
    assert time.monotonic() - started < 10
    # Thousands of tiny parts stop at the parser's part limit, also as a 413.
    parts = _upload(base, [(f"p{i}.txt", b"") for i in range(2000)])
    assert parts.status_code == 413

    nothing = _upload(base, [])
    assert nothing.status_code == 400
    assert _uploads_dir(docs) == before


def test_csrf_token_is_needed_for_form_posts_without_a_key(docs: dict) -> None:
    base = docs["base"]
    files = [("files", ("csrf.md", b"# CSRF\nThe token protects the upload form.\n"))]
    forged = httpx.post(f"{base}/api/documents", params={"collection": "uploads"}, files=files)
    assert forged.status_code == 403 and "CSRF" in forged.json()["error"]["message"]
    # What a foreign page could send as a "simple" request to /api/ask: text/plain.
    plain = httpx.post(
        f"{base}/api/ask",
        content=json.dumps({"question": "x"}),
        headers={"content-type": "text/plain"},
    )
    assert plain.status_code == 403

    with httpx.Client(base_url=base, timeout=60) as page:
        page.get("/")  # the page hands out the cookie
        token = page.cookies["csrftoken"]
        wrong = page.post(
            "/api/documents",
            params={"collection": "uploads"},
            files=files,
            headers={"x-csrftoken": token[:-4] + "0000"},
        )
        assert wrong.status_code == 403
        ok = page.post(
            "/api/documents",
            params={"collection": "uploads"},
            files=files,
            headers={"x-csrftoken": token},
        )
        assert ok.status_code == 202, ok.text
    assert _wait(base, ok.json()["id"])["files"][0]["state"] == "indexed"
    # DELETE is never a cross-site form: no token needed.
    assert (
        httpx.delete(
            f"{base}/api/documents", params={"collection": "uploads", "source": "csrf.md"}
        ).status_code
        == 200
    )


def test_jobs_queue_behind_each_other_without_blocking_the_server(docs: dict) -> None:
    base = docs["base"]
    first = _upload(base, [("corpus.txt", _corpus_text(200_000))])
    second = _upload(base, [("after.md", b"# After\nThe second job waits for the first.\n")])
    assert first.status_code == second.status_code == 202
    assert second.json()["state"] == "queued"
    # server.max_ingest_jobs = 2 are queued or running: a third upload is turned away.
    third = _upload(base, [("third.md", b"# Third\nthird\n")])
    assert third.status_code == 503 and third.headers["retry-after"]
    assert "server.max_ingest_jobs = 2" in third.json()["error"]["message"]

    # While the first job parses and embeds, the event loop keeps answering at once.
    slowest = 0.0
    while httpx.get(f"{base}/api/jobs/{first.json()['id']}").json()["state"] != "done":
        started = time.monotonic()
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        assert httpx.get(f"{base}/api/collections", timeout=10).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.1)
    assert slowest < 1.0, f"a request waited {slowest:.2f} s behind the ingest job"

    one, two = _wait(base, first.json()["id"]), _wait(base, second.json()["id"])
    assert one["chunks"] > 50 and one["files"][0]["state"] == "indexed"
    assert two["started_s"] >= one["finished_s"]
    metrics = httpx.get(f"{base}/metrics").text
    assert 'rag_ingest_files_total{outcome="indexed"}' in metrics
    assert 'rag_ingest_jobs{state="running"} 0.0' in metrics
    assert "rag_ingest_files_pending 0.0" in metrics
    chunks = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("rag_ingest_chunks_total")
    )
    assert chunks >= one["chunks"]
    for source in ("corpus.txt", "after.md"):
        httpx.delete(f"{base}/api/documents", params={"collection": "uploads", "source": source})


def test_job_progress_streams_as_server_sent_events(docs: dict) -> None:
    base = docs["base"]
    job = _upload(base, [("stream.txt", _corpus_text(60_000, seed=3))]).json()
    events: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{base}/api/jobs/{job['id']}/events", timeout=180) as r:
        assert r.headers["content-type"].startswith("text/event-stream"), r.read()
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line.split(":", 1)[1])))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert "progress" in kinds
    assert events[-1][1]["files"][0]["state"] == "indexed"
    chunks = [body["chunks"] for _, body in events]
    assert chunks == sorted(chunks) and chunks[-1] > 0
    httpx.delete(f"{base}/api/documents", params={"collection": "uploads", "source": "stream.txt"})


# A server's staging, as `rag serve` makes it; the first stops dead, the second waits.
_STAGE = """
import os, sys
from pathlib import Path
from web.uploads import Staging
folder = Staging(Path(sys.argv[1])).directory
(folder / "secret.md").write_text("staged, never ingested")
print(folder, flush=True)
if sys.argv[2] == "crash":
    os._exit(0)
sys.stdin.read()
"""


def test_a_stopped_servers_staged_uploads_are_deleted_when_a_server_starts(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"

    def stage(how: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _STAGE, str(data), how],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    crashed = stage("crash")
    dead = Path(crashed.communicate(timeout=60)[0].strip())
    running = stage("wait")
    assert running.stdout is not None
    alive = Path(running.stdout.readline().strip())
    assert (dead / "secret.md").exists() and (alive / "secret.md").exists()
    try:
        proc, base = start_server(data, **FAST_LLM_ENV)
        try:
            # The crashed one's folder is gone; the running one's is not touched.
            assert not dead.exists() and (alive / "secret.md").exists()
            job = _wait(
                base, _upload(base, [("notes.md", b"# Notes\n\nLunch is at noon.\n")]).json()["id"]
            )
            assert job["state"] == "done"
            mine = set((data / "uploads").iterdir()) - {alive}
            assert len(mine) == 1 and [p.name for p in next(iter(mine)).iterdir()] == [LOCK_FILE]
        finally:
            stop_server(proc)
        # A server that stops with nothing waiting deletes its own folder.
        assert list((data / "uploads").iterdir()) == [alive]
    finally:
        running.communicate(timeout=60)

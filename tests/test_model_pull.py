"""`rag models pull` against a local stand-in for the Hugging Face hub.

The hub is a boundary we do not own and cannot reach from here, so `FakeHub` serves the
part of its HTTP API huggingface_hub calls for a pull (the model listing with file hashes,
and file downloads with Range) from files the test builds; `rag` runs as users run it, a
subprocess with HF_ENDPOINT pointed at the fake.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rag.config import load_settings
from rag.models.catalog import read_model_spec
from rag.models.packaged import model_path
from tests.conftest import RAG, rag_env

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class RepoFile:
    data: bytes
    lfs: bool
    claimed_size: int | None = None  # what the listing says, when not len(data)
    claimed_sha256: str | None = None


@dataclass
class FakeHub:
    """Stands in for the Hugging Face hub (huggingface.co), a boundary we do not own and
    cannot run here: GET /api/models/<repo>?blobs=True and GET/HEAD
    /<repo>/resolve/<commit>/<file>, with Range. `cut_after_bytes` makes the next file
    transfer stop part-way and every request after it fail with 503, as a dropped link."""

    repos: dict[str, dict[str, RepoFile]]
    downloads: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    cut_after_bytes: int | None = None
    cut: bool = False
    endpoint: str = ""

    def listing(self, repo: str) -> dict[str, object]:
        siblings = []
        for name, f in self.repos[repo].items():
            size = f.claimed_size if f.claimed_size is not None else len(f.data)
            entry: dict[str, object] = {"rfilename": name, "size": size}
            if f.lfs:
                sha = f.claimed_sha256 or hashlib.sha256(f.data).hexdigest()
                entry["lfs"] = {"sha256": sha, "size": size, "pointerSize": 134}
                entry["blobId"] = hashlib.sha1(name.encode()).hexdigest()  # the pointer's
            else:
                header = f"blob {len(f.data)}\0".encode()
                entry["blobId"] = hashlib.sha1(header + f.data).hexdigest()
            siblings.append(entry)
        return {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}


def _handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if hub.cut:
                return self._send(503, b"link down", {})
            if path.startswith("/api/models/"):
                repo = path.removeprefix("/api/models/")
                if repo not in hub.repos:
                    return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                body = json.dumps(hub.listing(repo)).encode()
                return self._send(200, body, {"Content-Type": "application/json"})
            repo, sep, rest = path.lstrip("/").partition("/resolve/")
            name = rest.partition("/")[2]
            if not sep or name not in hub.repos.get(repo, {}):
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
            data = hub.repos[repo][name].data
            headers = {"X-Repo-Commit": COMMIT, "ETag": '"x"'}
            if self.command == "HEAD":
                return self._send(200, data, headers)
            hub.downloads.append((name, self.headers.get("Range")))
            start = 0
            status = 200
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if hub.cut_after_bytes is not None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start : start + hub.cut_after_bytes])
                self.wfile.flush()
                hub.cut, hub.cut_after_bytes = True, None
                self.close_connection = True
                return None
            return self._send(status, data[start:], headers)

    return Handler


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    gguf = model_path("bundled").read_bytes()
    config = json.dumps({"model_type": "llama"}).encode()
    fake = FakeHub(
        {
            "test/tiny-GGUF": {
                "tiny-q4_k_m.gguf": RepoFile(gguf, lfs=True),
                "config.json": RepoFile(config, lfs=False),
                "README.md": RepoFile(b"# tiny\n", lfs=False),
            },
            "test/tiny-mlx": {
                "config.json": RepoFile(config, lfs=False),
                "model.safetensors": RepoFile(os.urandom(1 << 20), lfs=True),
                "tokenizer.json": RepoFile(b"{}", lfs=False),
                "weights.gguf": RepoFile(b"not wanted", lfs=True),
            },
            "test/bad-GGUF": {
                "bad.gguf": RepoFile(
                    os.urandom(1 << 20), lfs=True, claimed_sha256=hashlib.sha256(b"x").hexdigest()
                )
            },
            "test/huge-GGUF": {"huge.gguf": RepoFile(b"", lfs=True, claimed_size=10**18)},
        }
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def _env(hub: FakeHub, tmp_path: Path, engine: str = "llamacpp") -> dict[str, str]:
    env = rag_env(
        tmp_path / "data",
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_OFFLINE="0",
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        RAG_LLM_ENGINE=engine,  # the same format wherever the test runs
    )
    env.pop("HF_TOKEN", None)
    config = tmp_path / "config.toml"
    if not config.exists():
        config.write_text("")
    env["RAG_CONFIG"] = str(config)
    return env


def _pull(
    hub: FakeHub, tmp_path: Path, *args: str, engine: str = "llamacpp"
) -> subprocess.CompletedProcess[str]:
    env = _env(hub, tmp_path, engine)
    cmd = [str(RAG), "models", "pull", *args, "--json"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_a_pull_fetches_the_model_and_a_second_pull_is_a_no_op(
    hub: FakeHub, tmp_path: Path
) -> None:
    (tmp_path / "config.toml").write_text(
        '# my settings\n[llm]\n# which model\nmodel = "bundled"  # for now\n'
    )
    first = _pull(hub, tmp_path, "test/tiny-GGUF", "--set")
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)
    assert not got["already_here"]
    assert got["files"] == ["tiny-q4_k_m.gguf"]  # the GGUF alone, for llama.cpp
    assert Path(got["model"]).read_bytes() == model_path("bundled").read_bytes()
    assert Path(got["model"]).is_relative_to(tmp_path / "hub")
    # llm.model can name what was pulled, and --set named it, keeping the comments.
    assert read_model_spec(got["model"]).layers == read_model_spec("bundled").layers
    config = (tmp_path / "config.toml").read_text()
    assert "# my settings" in config and "# which model" in config and "# for now" in config
    assert load_settings(tmp_path / "config.toml", env={}).llm.model == got["model"]

    listed = subprocess.run(
        [str(RAG), "models", "list", "--json"],
        env=_env(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    pulled = [row for row in json.loads(listed.stdout) if row["source"] == "hub"]
    assert [(row["repo_id"], row["name"]) for row in pulled] == [("test/tiny-GGUF", got["model"])]

    before = len(hub.downloads)
    second = _pull(hub, tmp_path, "test/tiny-GGUF")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["already_here"]
    assert len(hub.downloads) == before  # nothing fetched


def test_an_mlx_machine_gets_the_model_directory_under_its_repo_id(
    hub: FakeHub, tmp_path: Path
) -> None:
    from huggingface_hub import snapshot_download

    done = _pull(hub, tmp_path, "test/tiny-mlx", "--set", engine="mlx")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["model"] == "test/tiny-mlx"
    assert sorted(got["files"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    # What rag.models.catalog does to find a hub id in the cache.
    found = snapshot_download("test/tiny-mlx", cache_dir=tmp_path / "hub", local_files_only=True)
    assert sorted(p.name for p in Path(found).iterdir()) == got["files"]
    # --set on a config file with no [llm] table adds one.
    assert load_settings(tmp_path / "config.toml", env={}).llm.model == "test/tiny-mlx"


def test_an_interrupted_pull_continues_with_a_range_request(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_after_bytes = 10 << 20
    broken = _pull(hub, tmp_path, "test/tiny-GGUF")
    assert broken.returncode != 0
    assert "run the same pull again" in broken.stderr
    partials = list((tmp_path / "hub").rglob("*.pull-partial"))
    assert len(partials) == 1 and partials[0].stat().st_size == 10 << 20

    hub.cut = False
    hub.downloads.clear()
    resumed = _pull(hub, tmp_path, "test/tiny-GGUF")
    assert resumed.returncode == 0, resumed.stderr
    assert ("tiny-q4_k_m.gguf", f"bytes={10 << 20}-") in hub.downloads
    size = model_path("bundled").stat().st_size
    assert json.loads(resumed.stdout)["fetched_bytes"] < size
    digest = hashlib.sha256(Path(json.loads(resumed.stdout)["model"]).read_bytes()).hexdigest()
    assert digest == hashlib.sha256(model_path("bundled").read_bytes()).hexdigest()


def test_bytes_that_do_not_match_the_hubs_sha256_are_refused_and_deleted(
    hub: FakeHub, tmp_path: Path
) -> None:
    bad = _pull(hub, tmp_path, "test/bad-GGUF")
    assert bad.returncode != 0
    assert "do not match the hub's sha256" in bad.stderr
    assert hub.downloads == [("bad.gguf", None)]
    left = [p for p in (tmp_path / "hub").rglob("*") if p.is_file() and "blobs" in p.parts]
    assert left == []


def test_a_model_larger_than_the_free_disk_is_refused_before_any_download(
    hub: FakeHub, tmp_path: Path
) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert free < 10**18
    huge = _pull(hub, tmp_path, "test/huge-GGUF")
    assert huge.returncode != 0
    assert f"{10**18:,} bytes" in huge.stderr and "is free" in huge.stderr
    assert hub.downloads == []


def test_an_unreachable_hub_is_a_clear_error(hub: FakeHub, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    hub.endpoint = f"http://127.0.0.1:{port}"
    done = _pull(hub, tmp_path, "test/tiny-GGUF")
    assert done.returncode != 0
    assert f"cannot list test/tiny-GGUF on http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr

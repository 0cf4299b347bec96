"""Shared fixtures: the real bundled models, loaded once per session, and indexes on tmp dirs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from rag.config import EmbeddingSettings, LlmSettings, Settings, StorageSettings
from rag.embed.embedder import Embedder, load_embedder
from rag.index.store import Store, open_store
from rag.llm.base import Engine
from rag.llm.mlx import MlxEngine, load_mlx_engine

if TYPE_CHECKING:
    from rag.llm.llamacpp import LlamaCppEngine

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
RAG = Path(sys.executable).parent / "rag"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite answers with the tiny bundled model, for speed; "auto" (the default, the model
# the planner picks) is what tests that say so use.
TEST_MODEL = "bundled"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return load_embedder(EmbeddingSettings())


@pytest.fixture(scope="session")
def engine() -> MlxEngine:
    """The MLX engine (llm.engine = "mlx"), whatever "auto" would pick here."""
    return load_mlx_engine(LlmSettings(engine="mlx", model=TEST_MODEL))


@pytest.fixture(scope="session")
def llamacpp_engine() -> LlamaCppEngine:
    """The llama.cpp engine (llm.engine = "llamacpp") on the bundled GGUF, n_ctx 2048."""
    pytest.importorskip("llama_cpp", reason="`make install` builds llama-cpp-python")
    from rag.llm.llamacpp import load_llamacpp_engine

    return load_llamacpp_engine(LlmSettings(engine="llamacpp", model=TEST_MODEL))


@pytest.fixture(params=["mlx", "llamacpp"])
def any_engine(request: pytest.FixtureRequest) -> Engine:
    """Each local engine in turn, for tests that hold whichever engine runs."""
    return request.getfixturevalue("engine" if request.param == "mlx" else "llamacpp_engine")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        storage=StorageSettings(data_dir=str(tmp_path / "data")), llm=LlmSettings(model=TEST_MODEL)
    )


@pytest.fixture
def store(settings: Settings, embedder: Embedder) -> Store:
    return open_store(settings.storage.data_path, embedder.name, embedder.dim)


def rag_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a `rag` subprocess: its own index, no user config, no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(RAG_STORAGE_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", RAG_LLM_MODEL=TEST_MODEL)
    env.update(extra)
    env["RAG_CONFIG"] = str(ROOT / "config.toml")
    return env


@pytest.fixture
def chdir_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run from the repository root so sources read `samples/...` as users see them."""
    monkeypatch.chdir(ROOT)
    yield ROOT


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of the sample documents, built once by the real `rag ingest` command."""
    import json
    import subprocess

    data_dir = tmp_path_factory.mktemp("sample-index")
    done = subprocess.run(
        [str(RAG), "ingest", "samples/", "--json"],
        cwd=ROOT,
        env=rag_env(data_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 4 and report["failed"] == []
    return data_dir


# Short greedy answers keep generation tests to seconds on a 2-core CPU.
FAST_LLM_ENV = {"RAG_LLM_ANSWER_TOKENS": "24", "RAG_RETRIEVAL_K": "2"}


def stored_state(data: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every stored row of an index but the vector, sorted, and the vectors by chunk_id."""
    store = open_store(data, None, 0)
    table = store.tables.open(store.tables.active_name())
    stats = table.index_stats("text_idx")
    assert stats is not None and stats.num_unindexed_rows == 0, "full-text index is behind"
    rows = table.search().limit(None).to_arrow().to_pylist()
    vectors = {r["chunk_id"]: np.array(r.pop("vector")) for r in rows}
    assert len(vectors) == len(rows), "duplicate chunk ids"
    return sorted(rows, key=lambda r: r["chunk_id"]), vectors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    data_dir: Path, while_loading: Callable[[str], None] | None = None, **env: str
) -> tuple[subprocess.Popen[str], str]:
    """Start `rag serve` on a free port; return the process and its base URL once ready.

    `while_loading(base)` runs once the service answers and the models are still loading.
    """
    port = free_port()
    log = data_dir / f"serve-{port}.log"
    with log.open("w") as out:  # a file, not a pipe: nobody drains a pipe during the tests
        proc = subprocess.Popen(
            [str(RAG), "serve", "--port", str(port)],
            cwd=ROOT,
            env=rag_env(data_dir, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    saw_not_ready = False
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            status = httpx.get(f"{base}/ready", timeout=2).status_code
        except httpx.TransportError:
            status = 0
        if status == 200:
            # /ready said 503 while the models loaded, and only then 200.
            assert saw_not_ready
            return proc, base
        if status == 503 and not saw_not_ready and while_loading is not None:
            while_loading(base)
        saw_not_ready = saw_not_ready or status == 503
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"rag serve did not become ready in 120 s:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(sample_data_dir: Path) -> Iterator[str]:
    """`rag serve` on the sample index, in its own process; yields its base URL."""
    proc, base = start_server(sample_data_dir, **FAST_LLM_ENV)
    try:
        yield base
    finally:
        stop_server(proc)

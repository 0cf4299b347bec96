"""The `openai` engine against a real mlx_lm.server serving the bundled model.

`rag models convert bundled DIR` writes the MLX model directory; mlx_lm.server (the server
mlx-lm ships, a real process on loopback) serves it; rag answers through llm.engine =
"openai" with its own retrieval, packing and citations. One short document and short
greedy answers keep each prefill to seconds on a 2-core CPU; the server's prompt cache
makes the repeated prompts cheap.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.config import ChunkingSettings, LlmSettings, Settings, StorageSettings
from rag.embed.embedder import Embedder
from rag.index.store import open_store
from rag.llm.mlx import MlxEngine
from rag.llm.remote import OpenAIEngine, load_remote_engine
from rag.qa.answerer import load_answerer
from rag.records import Answer, Delta
from tests.conftest import RAG, ROOT, free_port, rag_env

pytestmark = pytest.mark.slow

DOC = (
    "# Generator\n\nThe emergency generator in building C is tested every Tuesday at 07:00 "
    "by the facilities team.\n"
)
QUESTION = "When is the emergency generator tested?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlx") / "smollm2"
    done = subprocess.run(
        [str(RAG), "models", "convert", "bundled", str(out), "--json"],
        env=rag_env(out.parent / "data"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["method"] == "gguf" and report["bits"] == 4
    return out


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    port = free_port()
    log = model_dir.parent / "mlx_lm.server.log"
    server_cli = Path(sys.executable).parent / "mlx_lm.server"
    args = ["--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(server_cli), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, server: str, model_dir: Path) -> Settings:
    root = tmp_path_factory.mktemp("remote")
    (root / "docs").mkdir()
    (root / "docs" / "generator.md").write_text(DOC)
    return Settings(
        storage=StorageSettings(data_dir=str(root / "data")),
        llm=LlmSettings(
            engine="openai",
            base_url=server,
            model=str(model_dir),
            context_tokens=1024,
            answer_tokens=24,
        ),
    )


@pytest.fixture(scope="module")
def indexed(settings: Settings, embedder: Embedder) -> Settings:
    from ingest.run import run_ingest

    store = open_store(settings.storage.data_path, embedder.name, embedder.dim)
    docs = settings.storage.data_path.parent / "docs"
    run_ingest(
        [docs], collection="default", chunking=ChunkingSettings(), embedder=embedder, store=store
    )
    return settings


def test_the_converted_directory_is_the_bundled_model(model_dir: Path, engine: MlxEngine) -> None:
    import mlx.core as mx
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(model_dir))
    ids = engine.encode_chat([{"role": "user", "content": QUESTION}])
    assert list(tokenizer.encode(engine.tokenizer.decode(ids), add_special_tokens=False)) == ids
    # Same greedy next token as rag's own engine (which runs CPU-tuned copies of the weights).
    converted = model(mx.array([ids]))[0, -1]
    ours = engine.model(mx.array([ids]))[0, -1]
    assert mx.argmax(converted).item() == mx.argmax(ours).item()
    assert mx.allclose(converted, ours, atol=0.05).item()


def test_rag_answers_through_mlx_lm_server_with_checked_citations(indexed: Settings) -> None:
    answerer = load_answerer(indexed)
    assert isinstance(answerer.engine, OpenAIEngine)
    items = list(answerer.stream(QUESTION, "default", 2))
    final = items[-1]
    assert isinstance(final, Answer) and not final.not_found
    deltas = [i.text for i in items[:-1] if isinstance(i, Delta)]
    assert len(deltas) > 1  # streamed, not one block
    assert "".join(deltas).strip() == final.answer
    assert [Path(c.source).name for c in final.citations] == ["generator.md"]
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", final.answer)}
    assert markers <= {c.n for c in final.citations}
    assert "tuesday" in final.answer.lower() or "07:00" in final.answer
    assert 0 < final.usage.completion_tokens <= 24
    assert final.usage.prompt_tokens <= answerer.context_tokens - 24
    answerer.engine.stop_batching()


def test_the_server_counts_exactly_the_prompt_tokens_rag_packed(indexed: Settings) -> None:
    engine = load_remote_engine(indexed.llm)
    ids = engine.encode_chat(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    )
    body = {"prompt": engine.prompt_text(ids), "max_tokens": 1, "temperature": 0}
    usage = httpx.post(f"{engine.base_url}/completions", json=body, timeout=120).json()["usage"]
    assert usage["prompt_tokens"] == len(ids)
    engine.stop_batching()


def test_cancelling_closes_the_stream_at_once(indexed: Settings) -> None:
    engine = load_remote_engine(indexed.llm)
    ids = engine.encode_chat([{"role": "user", "content": "Count from one to fifty."}])
    seen: list[str] = []
    start = time.perf_counter()
    items = []
    stream = engine.stream(ids, max_tokens=200, context_tokens=1024, should_stop=lambda: bool(seen))
    for item in stream:
        items.append(item)
        if isinstance(item, Delta):
            seen.append(item.text)
    final = items[-1]
    assert final.finish_reason == "cancelled"
    assert final.completion_tokens < 200
    assert time.perf_counter() - start < 120
    engine.stop_batching()


def test_doctor_checks_the_generation_server(indexed: Settings) -> None:
    from msgspec.structs import replace

    from rag.ops.check import FAIL, OK
    from rag.ops.modelchecks import check_generation_server

    [up] = check_generation_server(indexed.llm)
    assert up.status == OK and indexed.llm.base_url in up.evidence
    gone = replace(indexed.llm, base_url=f"http://127.0.0.1:{free_port()}/v1")
    [down] = check_generation_server(gone)
    assert down.status == FAIL and "cannot reach the generation server" in down.evidence


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(RAG), "ask", QUESTION],
        cwd=ROOT,
        env=rag_env(
            tmp_path,
            RAG_LLM_ENGINE="openai",
            RAG_LLM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "cannot reach the generation server" in done.stderr
    assert "llm.base_url" in done.stderr and "Traceback" not in done.stderr

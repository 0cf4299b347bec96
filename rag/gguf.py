"""Load a llama-architecture GGUF file as a native, still-quantized mlx_lm model.

mlx_lm has no GGUF loader, but `mx.load` reads GGUF and keeps Q4_0, Q4_1 and Q8_0 tensors as
MLX affine-quantized triples (weight, scales, biases). So the work here is mapping tensor
names, building the llama config from the metadata and quantizing each layer to the bits its
tensors already have; nothing is dequantized.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ModelLoadError

if TYPE_CHECKING:
    import mlx.nn as nn
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerBase

# mx.load unpacks every GGUF block type it keeps quantized into groups of 32 values.
GROUP_SIZE = 32

# general.file_type values mx.load keeps as they are. Other types (Q4_K, Q6_K, ...) are either
# dequantized to fp16, which silently costs about 4x the memory the file suggests, or rejected.
_SUPPORTED_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0"}

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
    """Return (mlx_lm llama Model with quantized layers, mlx_lm TokenizerWrapper, config dict).

    `tune` applies rag.cputune on the CPU backend (False: the model as the file has it),
    splitting matmuls across `cpu_threads` cores (0: all of them).

    The config holds the mlx_lm llama model arguments plus `quantization`
    ({"group_size", "bits"} of the bulk of the layers, or None): what config.json of an
    MLX model directory holds (rag.modeldir writes it as it is).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF model file not found: {path}")

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import llama

    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        # mx.load raises RuntimeError both for non-GGUF files and for block types it cannot
        # convert (Q5_0, Q5_1, Q3_K, Q5_K, IQ4_NL, ...).
        raise ModelLoadError(
            f"cannot load {path.name}: {e}. MLX reads GGUF files quantized as "
            f"{', '.join(_SUPPORTED_FILE_TYPES.values())}"
        ) from e

    config = _config_from_metadata(metadata, path)
    if "rope_freqs.weight" in tensors:
        # Llama 3.1+ files carry their rope scaling as per-frequency factors, which mlx_lm's
        # llama cannot take; a wrong rope still gives fluent but wrong text.
        raise ModelLoadError(f"{path.name} uses rope frequency factors, which are unsupported")
    weights = {_mlx_name(name): array for name, array in tensors.items()}
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    config["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in weights
    config["mlp_bias"] = "model.layers.0.mlp.up_proj.bias" in weights

    layer_bits = _layer_bits(weights)
    if layer_bits:
        bulk_bits = Counter(layer_bits.values()).most_common(1)[0][0]
        config["quantization"] = {"group_size": GROUP_SIZE, "bits": bulk_bits}
    else:
        config["quantization"] = None

    model = llama.Model(llama.ModelArgs.from_dict(config))
    nn.quantize(
        model,
        class_predicate=lambda layer, _module: (
            {"group_size": GROUP_SIZE, "bits": layer_bits[layer]} if layer in layer_bits else False
        ),
    )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelLoadError(f"{path.name} does not match a llama model: {e}") from e

    if tune:
        from rag.cputune import tune_model

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


def _config_from_metadata(metadata: dict[str, Any], path: Path) -> dict[str, Any]:
    def value(key: str, default: Any = None) -> Any:
        item = metadata.get(key, default)
        if item is None:
            raise ModelLoadError(f"{path.name} lacks the GGUF metadata key {key!r}")
        # Numbers come back as 0-d mx.arrays; strings and lists as Python objects.
        return item.item() if hasattr(item, "item") else item

    architecture = value("general.architecture")
    if architecture != "llama":
        raise ModelLoadError(
            f"{path.name} is a {architecture!r} model; only llama-architecture GGUF files load"
        )
    file_type = value("general.file_type", -1)
    if file_type != -1 and file_type not in _SUPPORTED_FILE_TYPES:
        from gguf import LlamaFileType

        names = {t.value: t.name for t in LlamaFileType}
        raise ModelLoadError(
            f"{path.name} is quantized as {names.get(file_type, file_type)}, which MLX "
            f"would dequantize or reject; use one of "
            f"{', '.join(_SUPPORTED_FILE_TYPES.values())}, or an MLX model directory"
        )
    scaling = value("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ModelLoadError(f"{path.name} uses rope scaling {scaling!r}, which is unsupported")

    hidden_size = value("llama.embedding_length")
    num_heads = value("llama.attention.head_count")
    return {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "num_hidden_layers": value("llama.block_count"),
        "intermediate_size": value("llama.feed_forward_length"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": value("llama.attention.head_count_kv", num_heads),
        "head_dim": value("llama.attention.key_length", hidden_size // num_heads),
        "rms_norm_eps": value("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": value("llama.rope.freq_base", 10000.0),
        # GGUF llama files store the Q/K rows permuted for llama.cpp's adjacent-pair rotary
        # layout, which is what mlx's "traditional" RoPE computes.
        "rope_traditional": True,
        "rope_scaling": (
            {"type": "linear", "factor": value("llama.rope.scaling.factor")}
            if scaling == "linear"
            else None
        ),
        "max_position_embeddings": value("llama.context_length"),
        "vocab_size": len(value("tokenizer.ggml.tokens")),
    }


def _mlx_name(gguf_name: str) -> str:
    """Map e.g. blk.3.attn_q.scales to model.layers.3.self_attn.q_proj.scales."""
    stem, _, kind = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 1 and stem in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[stem]}.{kind}"
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{kind}"
    raise ModelLoadError(
        f"unexpected tensor {gguf_name!r}: not a plain llama model (fused or MoE layers are "
        "unsupported)"
    )


def _layer_bits(weights: dict[str, Any]) -> dict[str, int]:
    """Bits per value of each quantized layer, keyed by module path.

    A row of n inputs packs into n * bits / 32 uint32 columns and has n / GROUP_SIZE scale
    columns, so with GROUP_SIZE == 32 the bits are simply packed columns / scale columns.
    """
    bits = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        layer = name.removesuffix(".scales")
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

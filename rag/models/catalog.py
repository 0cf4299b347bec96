"""The popular mlx-community 4-bit instruct models as data, and `llm.model` resolved to a
spec: a packaged model (rag.models.packaged), a local file or directory, a cached hub id, or a
catalog entry.
"""

from __future__ import annotations

from pathlib import Path

from rag.errors import ModelLoadError
from rag.models.packaged import model_path, packaged_model
from rag.models.spec import ModelSpec, read_gguf_spec, read_mlx_spec

# mlx-community/<name>-4bit: (name, params in billions, layers, hidden size, MLP width,
# attention heads, KV heads, head_dim, vocab, context). Dimensions from each model's Hugging
# Face config.json, parameter counts computed from them (reference/mlx.md section 5);
# context is the config's max_position_embeddings. Qwen3-30B-A3B's MLP width is the 8
# experts of 768 a token is routed to.
# fmt: off
_CATALOG_ROWS = (
    ("Qwen3-0.6B",                      0.60, 28, 1024,  3072, 16,  8, 128, 151936,  40960),
    ("Qwen3-1.7B",                      1.72, 28, 2048,  6144, 16,  8, 128, 151936,  40960),
    ("Qwen3-4B",                        4.02, 36, 2560,  9728, 32,  8, 128, 151936,  40960),
    ("Qwen3-8B",                        8.19, 36, 4096, 12288, 32,  8, 128, 151936,  40960),
    ("Qwen3-14B",                      14.77, 40, 5120, 17408, 40,  8, 128, 151936,  40960),
    ("Qwen3-32B",                      32.76, 64, 5120, 25600, 64,  8, 128, 151936,  40960),
    ("Qwen3-30B-A3B",                  30.53, 48, 2048,  6144, 32,  4, 128, 151936,  40960),
    ("Qwen2.5-0.5B-Instruct",           0.49, 24,  896,  4864, 14,  2,  64, 151936,  32768),
    ("Qwen2.5-1.5B-Instruct",           1.54, 28, 1536,  8960, 12,  2, 128, 151936,  32768),
    ("Qwen2.5-3B-Instruct",             3.09, 36, 2048, 11008, 16,  2, 128, 151936,  32768),
    ("Qwen2.5-7B-Instruct",             7.62, 28, 3584, 18944, 28,  4, 128, 152064,  32768),
    ("Qwen2.5-14B-Instruct",           14.77, 48, 5120, 13824, 40,  8, 128, 152064,  32768),
    ("Qwen2.5-32B-Instruct",           32.76, 64, 5120, 27648, 40,  8, 128, 152064,  32768),
    ("Qwen2.5-72B-Instruct",           72.71, 80, 8192, 29568, 64,  8, 128, 152064,  32768),
    ("Llama-3.2-1B-Instruct",           1.24, 16, 2048,  8192, 32,  8,  64, 128256, 131072),
    ("Llama-3.2-3B-Instruct",           3.21, 28, 3072,  8192, 24,  8, 128, 128256, 131072),
    ("Meta-Llama-3.1-8B-Instruct",      8.03, 32, 4096, 14336, 32,  8, 128, 128256, 131072),
    ("Llama-3.3-70B-Instruct",         70.55, 80, 8192, 28672, 64,  8, 128, 128256, 131072),
    ("gemma-3-1b-it",                   1.00, 26, 1152,  6912,  4,  1, 256, 262144,  32768),
    ("gemma-3-4b-it",                   3.88, 34, 2560, 10240,  8,  4, 256, 262208, 131072),
    ("gemma-3-12b-it",                 11.77, 48, 3840, 15360, 16,  8, 256, 262208, 131072),
    ("gemma-3-27b-it",                 27.01, 62, 5376, 21504, 32, 16, 128, 262208, 131072),
    ("Mistral-7B-Instruct-v0.3",        7.25, 32, 4096, 14336, 32,  8, 128,  32768,  32768),
    ("Mistral-Small-24B-Instruct-2501",23.57, 40, 5120, 32768, 32,  8, 128, 131072,  32768),
    ("phi-4",                          14.66, 40, 5120, 17920, 40, 10, 128, 100352,  16384),
)
# fmt: on
# Gemma 3 keeps a sliding window in all but every 6th layer (window tokens per model).
_SLIDING_WINDOW_TOKENS = {
    "gemma-3-1b-it": 512,
    "gemma-3-4b-it": 1024,
    "gemma-3-12b-it": 1024,
    "gemma-3-27b-it": 1024,
}
_GEMMA_GLOBAL_EVERY = 6
# The mlx-community Gemma 3 repos (4B and up) are mlx-vlm conversions with a ~0.42B vision
# tower: it costs memory but is not read while generating text.
_VISION_PARAMS_B = {"gemma-3-4b-it": 0.42, "gemma-3-12b-it": 0.42, "gemma-3-27b-it": 0.42}
# Mixtures of experts read only the experts a token is routed to (8 of Qwen3-30B-A3B's 128).
_ACTIVE_PARAMS_B = {"Qwen3-30B-A3B": 3.35}


def _catalog_spec(row: tuple[str, float, int, int, int, int, int, int, int, int]) -> ModelSpec:
    name, params_b, layers, hidden, intermediate, heads, kv_heads, head_dim, vocab, context = row
    window = _SLIDING_WINDOW_TOKENS.get(name, 0)
    vision_b = _VISION_PARAMS_B.get(name, 0.0)
    return ModelSpec(
        name=f"mlx-community/{name}-4bit",
        layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_context_tokens=context,
        # mlx_lm.convert -q quantizes every Linear and Embedding to 4 bits in groups of 64
        # with bf16 scales and biases; norms are too small to matter here.
        quantized_params=((4, round((params_b + vision_b) * 1e9)),),
        vision_params=round(vision_b * 1e9),
        active_params=round(_ACTIVE_PARAMS_B.get(name, 0.0) * 1e9),
        sliding_layers=layers - layers // _GEMMA_GLOBAL_EVERY if window else 0,
        sliding_window_tokens=window,
    )


CATALOG: tuple[ModelSpec, ...] = tuple(_catalog_spec(row) for row in _CATALOG_ROWS)


def catalog_spec(name: str) -> ModelSpec | None:
    return next((spec for spec in CATALOG if spec.name == name), None)


def read_model_spec(model: str) -> ModelSpec:
    """The spec of `llm.model`: a packaged model, a .gguf file, an MLX directory or a hub id.

    A packaged model is read from the header its first package holds, without joining its
    parts; a hub id from the local Hugging Face cache when it is there, else from the
    catalog. Nothing is downloaded.
    """

    packaged = packaged_model(model)
    if packaged is not None:
        return read_gguf_spec(packaged.header_path(), name=packaged.name)
    path = model_path(model)
    if path.suffix == ".gguf":
        return read_gguf_spec(path)
    if path.is_dir():
        return read_mlx_spec(path)
    cached = _cached_snapshot(model)
    if cached is not None:
        return read_mlx_spec(cached)
    spec = catalog_spec(model)
    if spec is None:
        raise ModelLoadError(
            f"cannot plan llm.model = {model!r}: it is not a packaged model, a .gguf file, an "
            "MLX model directory, a hub id in the local Hugging Face cache, or a model in the "
            "catalog"
        )
    return spec


def cached_hub_ids() -> set[str]:
    """Catalog models already in the local Hugging Face cache (usable without a download)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = Path(HF_HUB_CACHE)
    found = set()
    for spec in CATALOG:
        snapshots = cache / f"models--{spec.name.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir() and any(snapshots.iterdir()):
            found.add(spec.name)
    return found


def _cached_snapshot(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (ValueError, OSError):
        # LocalEntryNotFoundError (an OSError): not in the cache.
        return None

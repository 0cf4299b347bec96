from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import msgspec
import pytest

from rag.config import EmbeddingSettings, HardwareSettings, LlmSettings, Settings, StorageSettings
from rag.errors import InsufficientMemoryError
from rag.llm.mlx import MlxEngine
from rag.models.catalog import CATALOG, catalog_spec
from rag.models.hardware import GB, GIB, apple_bandwidth_bytes_per_s, simulate_hardware
from rag.models.planner import (
    choose_model,
    decode_tokens_per_s,
    kv_bytes,
    kv_bytes_per_token,
    max_context_tokens,
    peak_bytes,
    plan,
    weights_bytes,
)
from rag.models.spec import ModelSpec, embedder_weights_bytes
from tests.conftest import TEST_MODEL

from .conftest import RAG, ROOT, rag_env

EMBEDDER_BYTES = embedder_weights_bytes(EmbeddingSettings())


def _spec(name: str) -> ModelSpec:
    spec = catalog_spec(f"mlx-community/{name}-4bit")
    assert spec is not None
    return spec


# What people run on Apple Silicon at 4 bits with a useful (8K) context. At 32 GB the "30B
# class" includes the 32B Qwens: 18 GB of weights leave ~4 GB of the 21 GiB working set for
# the KV cache, and that is what 32 GB owners run.
@pytest.mark.parametrize(
    ("memory_gb", "chip", "smallest_b", "largest_b"),
    [
        (8, "M1", 3.0, 4.5),
        (8, "M2", 3.0, 4.5),
        (16, "M4", 8.0, 15.0),
        (16, "M1 Pro", 8.0, 15.0),
        (24, "M4", 14.0, 30.0),
        (32, "M2 Max", 14.0, 33.0),
        (48, "M4 Pro", 32.0, 71.0),
        (64, "M2 Max", 32.0, 73.0),
        (96, "M2 Max", 70.0, 73.0),
        (128, "M4 Max", 70.0, 73.0),
    ],
)
def test_model_choice_matches_what_each_memory_tier_runs(
    memory_gb: int, chip: str, smallest_b: float, largest_b: float
) -> None:
    chosen = choose_model(
        simulate_hardware(memory_gb, chip), CATALOG, embedder_bytes=EMBEDDER_BYTES
    )
    assert chosen is not None and chosen.fits
    assert smallest_b <= chosen.text_params / 1e9 <= largest_b, chosen.model
    assert chosen.max_context_tokens >= 8192
    assert chosen.peak_bytes <= chosen.budget_bytes


@pytest.mark.parametrize(
    ("chip", "memory_gb", "expected"), [("M2", 16, 18.0), ("M4 Max", 64, 58.0)]
)
def test_decode_speed_of_a_7b_model_follows_memory_bandwidth(
    chip: str, memory_gb: int, expected: float
) -> None:
    hardware = simulate_hardware(memory_gb, chip)
    speed = decode_tokens_per_s(_spec("Mistral-7B-Instruct-v0.3"), hardware, 2048)
    assert speed == pytest.approx(expected, rel=0.2)


def test_cpu_backend_gets_no_speed_estimate() -> None:
    hardware = simulate_hardware(24, "AMD EPYC")
    assert hardware.backend == "cpu"
    assert decode_tokens_per_s(_spec("Qwen3-4B"), hardware, 2048) is None


@pytest.mark.parametrize(
    ("name", "fp16", "eight_bit", "four_bit"),
    [
        # reference/mlx.md section 5: 2 x layers x kv_heads x head_dim x bytes per element.
        ("Qwen3-8B", 147_456, 78_336, 41_472),
        ("Meta-Llama-3.1-8B-Instruct", 131_072, 69_632, 36_864),
        ("Qwen2.5-7B-Instruct", 57_344, 30_464, 16_128),
        ("phi-4", 204_800, 108_800, 57_600),
    ],
)
def test_kv_bytes_per_token_unquantized_and_quantized(
    name: str, fp16: int, eight_bit: int, four_bit: int
) -> None:
    spec = _spec(name)
    assert kv_bytes_per_token(spec, "metal") == fp16
    assert kv_bytes_per_token(spec, "metal", kv_bits=8) == eight_bit
    assert kv_bytes_per_token(spec, "metal", kv_bits=4) == four_bit
    # The CPU backend runs the model in fp32, and the cache with it.
    assert kv_bytes_per_token(spec, "cpu") == 2 * fp16


def test_kv_cache_grows_in_256_token_steps() -> None:
    # One layer with 8 KV heads x 128 holding a 300-token prompt allocates 512 tokens:
    # 2,097,152 bytes, as measured in reference/mlx.md section 2.4.
    layer = dataclasses.replace(_spec("Qwen3-8B"), layers=1)
    assert kv_bytes(layer, 300, "metal") == 2_097_152
    assert kv_bytes(layer, 512, "metal") == 2_097_152
    assert kv_bytes(layer, 513, "metal") == 2_097_152 * 3 // 2
    hardware = simulate_hardware(16, "M4")
    assert (
        plan(hardware, _spec("Qwen3-14B"), os_headroom_bytes=4 * GIB).max_context_tokens % 256 == 0
    )


def test_sliding_window_layers_stop_growing_at_the_window() -> None:
    gemma = _spec("gemma-3-27b-it")
    assert (gemma.layers, gemma.sliding_layers, gemma.sliding_window_tokens) == (62, 52, 1024)
    # Only the 10 global layers pay for tokens past the window.
    assert kv_bytes_per_token(gemma, "metal") == 10 * 2 * 16 * 128 * 2
    assert kv_bytes(gemma, 32768, "metal") == pytest.approx(3.12e9, rel=0.01)


def test_max_context_is_what_the_free_memory_holds_and_never_more_than_the_model() -> None:
    spec = _spec("Qwen3-8B")
    roomy = max_context_tokens(spec, "metal", 100 * GIB)
    assert roomy == spec.max_context_tokens
    tight = max_context_tokens(spec, "metal", 2 * GIB)
    assert 0 < tight < roomy and tight % 256 == 0
    assert max_context_tokens(spec, "metal", 2 * GIB, concurrent_sequences=2) < tight


def test_an_mlx_directory_is_read_from_its_headers_as_mlx_holds_it(tmp_path: Path) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from rag.models.spec import read_mlx_spec

    config = {
        "model_type": "llama",
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "quantization": {"group_size": 64, "bits": 4, "lm_head": {"group_size": 32, "bits": 8}},
    }
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    nn.quantize(
        model,
        class_predicate=lambda path, module: (
            hasattr(module, "to_quantized") and config["quantization"].get(path, True)
        ),
        group_size=64,
        bits=4,
    )
    mx.save_safetensors(str(tmp_path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (tmp_path / "config.json").write_text(json.dumps(config))

    spec = read_mlx_spec(tmp_path)
    assert (spec.layers, spec.kv_heads, spec.head_dim, spec.max_context_tokens) == (2, 2, 32, 4096)
    # Per layer q, k, v, o and the three MLP projections; the embedding at 4 bits and the
    # lm_head at 8 bits in groups of 32, as the config's per-layer override says.
    per_layer = 2 * 128 * 128 + 2 * 64 * 128 + 3 * 128 * 256
    assert dict(spec.quantized_params) == {4: 2 * per_layer + 512 * 128, 8: 512 * 128}
    held = sum(a.nbytes for _, a in tree_flatten(model.parameters()))
    assert weights_bytes(spec, "metal") == held
    # On the CPU backend the engine casts to fp32: scales, biases and norms double.
    model.set_dtype(mx.float32)
    assert weights_bytes(spec, "cpu") == sum(a.nbytes for _, a in tree_flatten(model.parameters()))


def test_metal_working_set_and_bandwidth_of_simulated_macs() -> None:
    # macOS's recommendedMaxWorkingSetSize: 2/3 of RAM up to 32 GiB, 3/4 above.
    assert simulate_hardware(16, "M2").gpu_budget_bytes == pytest.approx(10922.67 * 2**20, 1e-6)
    assert simulate_hardware(36, "M4 Max").gpu_budget_bytes == 27 * GIB
    assert simulate_hardware(64, "M1 Max").gpu_budget_bytes == 48 * GIB
    # Binned chips: the cut-down bin comes only with some memory sizes.
    assert apple_bandwidth_bytes_per_s("Apple M4 Max", 36 * GIB) == 410 * GB
    assert apple_bandwidth_bytes_per_s("Apple M4 Max", 128 * GIB) == 546 * GB
    assert apple_bandwidth_bytes_per_s("M3 Max", 96 * GIB) == 300 * GB
    assert apple_bandwidth_bytes_per_s("m3 max", 64 * GIB) == 400 * GB
    assert apple_bandwidth_bytes_per_s("AMD EPYC", 64 * GIB) is None


def test_a_model_too_big_for_the_budget_is_refused_with_the_numbers() -> None:
    hardware = simulate_hardware(16, "M4")
    refused = plan(
        hardware, _spec("Qwen2.5-32B-Instruct"), os_headroom_bytes=4 * GIB, min_context_tokens=8192
    )
    assert not refused.fits
    assert "GiB" in refused.reason and "GPU working set" in refused.reason
    assert weights_bytes(_spec("Qwen2.5-32B-Instruct"), "metal") > hardware.gpu_budget_bytes


def test_rag_plan_simulates_a_16_gb_m4(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(RAG), "plan", "--memory-gb", "16", "--chip", "M4", "--json"],
        cwd=ROOT,
        env=rag_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["hardware"]["backend"] == "metal"
    assert result["hardware"]["memory_bandwidth_bytes_per_s"] == 120e9
    chosen = result["chosen"]
    assert 8 <= chosen["text_params"] / 1e9 <= 15
    assert chosen["max_context_tokens"] >= 8192 and chosen["decode_tokens_per_s"] > 5
    assert result["configured"]["fits"] and result["configured"]["model"].startswith("smollm2")
    refused = [m for m in result["models"] if not m["fits"]]
    assert refused and all("budget" in m["reason"] for m in refused)


def test_serving_refuses_a_model_over_the_memory_limit_before_loading(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(RAG), "ask", "Anything?"],
        cwd=ROOT,
        env=rag_env(tmp_path, RAG_HARDWARE_MEMORY_LIMIT_GB="0.15"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    message = done.stderr.strip()
    assert message.startswith("error: smollm2-135m does not fit")
    assert "hardware.memory_limit_gb" in message and "weights 110 MiB" in message
    assert "over the 154 MiB budget" in message


@pytest.mark.slow
def test_the_answerer_context_is_capped_at_what_the_memory_limit_holds(tmp_path: Path) -> None:
    from rag.llm.sizing import plan_configured
    from rag.models.hardware import resolve_hardware
    from rag.qa.answerer import load_answerer

    settings = Settings(
        storage=StorageSettings(data_dir=str(tmp_path / "data")),
        llm=LlmSettings(model=TEST_MODEL),
        hardware=HardwareSettings(memory_limit_gb=0.35),
    )
    served = plan_configured(settings, resolve_hardware(settings.hardware))
    assert served.fits and 1024 <= served.max_context_tokens < settings.llm.context_tokens
    answerer = load_answerer(settings)
    assert answerer.context_tokens == served.max_context_tokens
    with pytest.raises(InsufficientMemoryError, match="does not fit"):
        load_answerer(
            msgspec.structs.replace(settings, hardware=HardwareSettings(memory_limit_gb=0.1))
        )


@pytest.mark.slow
def test_measured_peak_memory_matches_the_prediction(engine: MlxEngine) -> None:
    """mx.get_peak_memory of a short greedy generation against planner.peak_bytes."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from rag.models.catalog import read_model_spec
    from rag.models.hardware import detect_hardware

    backend = detect_hardware().backend
    spec = read_model_spec("bundled")
    loaded = sum(a.nbytes for _, a in tree_flatten(engine.model.parameters()))
    assert weights_bytes(spec, backend) == loaded
    sentence = "The standby database is promoted when the primary fails its health check. "
    answer_tokens = 4
    for repeats in (20, 88):  # ~300 and ~1200 prompt tokens
        ids = engine.encode_chat([{"role": "user", "content": "Summarise: " + sentence * repeats}])
        mx.clear_cache()
        mx.reset_peak_memory()
        *_, final = engine.stream(ids, max_tokens=answer_tokens, context_tokens=8192)
        measured = mx.get_peak_memory()
        predicted = peak_bytes(spec, backend, len(ids), answer_tokens)
        assert measured == pytest.approx(predicted, rel=0.15), (len(ids), measured, predicted)
        # The engine's own per-request figure is the same measurement.
        assert final.peak_memory_bytes == pytest.approx(measured, rel=0.01)

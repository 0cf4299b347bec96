"""The speed probe: how fast this machine runs a model, per engine, measured once and kept.

The planner predicts time to first token from FLOPs and decode speed from bytes read, so it
needs two figures of the machine as an engine sees it: prefill FLOP/s and decode bytes/s.
They are measured by a probe of a few seconds, per engine:

- llama.cpp: the bundled SmolLM2-135M GGUF reads a prompt (tokens/s x FLOPs per token
  gives FLOP/s) and decodes a few tokens (tokens/s x bytes read per token gives the
  effective bandwidth); each with llama.cpp's per-layer cost set apart (see below).
- MLX: a stack of 4-bit linear layers, the kernels a model runs, tuned as the engine tunes
  a model on the CPU (rag.llm.cputune): a prompt-sized batch for FLOP/s and single tokens for
  bandwidth. On Metal the chip's published bandwidth keeps predicting decode.

The result is kept under hardware.speed_cache_dir with the hardware identity it was taken
on (CPU, cores, memory, backend, engine, library version); another identity is another
file, so a changed machine is measured again. `rag plan --measure` measures anew.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from rag.config import LlmSettings, Settings
from rag.errors import ModelLoadError
from rag.llm.cputune import tune_model
from rag.llm.load import choose_engine
from rag.models.hardware import Hardware
from rag.models.packaged import PackagedModel, installed_models
from rag.models.packaged import model_path as packaged_path
from rag.models.planner import LLAMACPP, decode_bytes_per_token, prefill_flops
from rag.models.spec import ModelSpec, read_gguf_spec
from rag.models.speed import (
    MachineSpeed,
    cached_speed,
    hardware_identity,
    store_speed,
    table_speed,
)

# What the llama.cpp probe reads and writes with the bundled model (about 2 s on 2 cores),
# each phase cut short after PHASE_S on a busy machine.
PROMPT_TOKENS = 256


PROBE_CHUNK_TOKENS = 128  # the engine's first prefill chunk


DECODE_TOKENS = 32


PHASE_S = 4.0


# Work llama.cpp does per layer and token besides reading the weights (graph nodes, thread
# barriers, norms, softmax, unrepacked kernels), as FLOPs at its prefill rate and bytes at
# its decode bandwidth. A 135M model spends most of its time there, a 1.5B one little, so
# the bundled model alone would make larger models look slower than they are. Fit to the
# issue's 2-core x86 measurements of both on llama.cpp, for a 1000-token prompt:
# SmolLM2-135M Q4_1 290 prompt tokens/s and 115 tokens/s, Qwen2.5-Coder-1.5B Q4_K_M 80
# and 13.8 (which puts that machine at 317 GFLOP/s and 16 GB/s).
LLAMACPP_PREFILL_LAYER_FLOPS = 28.2e6


LLAMACPP_DECODE_LAYER_BYTES = 0.58e6


def machine_speed(
    directory: Path,
    identity: dict[str, Any],
    model_path: Path | None = None,
    *,
    measure: bool = False,
) -> MachineSpeed:
    """This machine's speed for identity["engine"]: from the cache, else measured and kept."""
    if not measure:
        cached = cached_speed(directory, identity)
        if cached is not None:
            return cached
    speed = measure_speed(identity, model_path)
    store_speed(directory, speed)
    return speed


def measure_speed(identity: dict[str, Any], model_path: Path | None = None) -> MachineSpeed:
    engine = identity["engine"]
    started = time.time()
    if engine == "llamacpp":
        if model_path is None:
            model_path = packaged_path("bundled")
        speed = _probe_llamacpp(model_path, identity["threads"])
    elif engine == "mlx":
        speed = _probe_mlx(identity["threads"])
    else:
        raise ValueError(f"no speed probe for engine {engine!r}")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    return dataclasses.replace(
        speed,
        identity=identity,
        source=f"measured {when}",
        probe={**speed.probe, "seconds": round(time.time() - started, 2)},
    )


def _probe_llamacpp(path: Path, threads: int) -> MachineSpeed:
    # As the engine runs it (rag.llm.llamacpp): idle threads sleep rather than spin, which on a
    # machine busy with other work is the difference between seconds and minutes.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise ModelLoadError(f"cannot measure llama.cpp: {e}; pip install llama-cpp-python") from e
    spec = read_gguf_spec(path)
    try:
        llm = Llama(
            model_path=str(path),
            n_ctx=PROMPT_TOKENS + DECODE_TOKENS + 16,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:  # llama-cpp-python's load failures
        raise ModelLoadError(f"llama.cpp cannot load {path.name} to measure it: {e}") from e
    text = "The standby database is promoted when the primary fails its health check. "
    ids = llm.tokenize((text * 48).encode(), add_bos=True)[:PROMPT_TOKENS]
    if len(ids) < PROMPT_TOKENS:
        raise ModelLoadError(f"the probe prompt is only {len(ids)} tokens")

    llm.eval(ids[:16])  # warm-up: first-call allocations and page faults
    llm.reset()  # the next eval overwrites the cache from position 0
    # In chunks, so that a machine busy with other work ends the probe early rather than
    # late: the rates come from what was done when the time was up. Other work only ever
    # slows a step down, so each phase is timed by its fastest steps: the machine's speed,
    # not the moment's.
    chunk_s: list[float] = []
    begun = time.perf_counter()
    while len(chunk_s) * PROBE_CHUNK_TOKENS < PROMPT_TOKENS and (
        not chunk_s or _since(begun) < PHASE_S
    ):
        start = len(chunk_s) * PROBE_CHUNK_TOKENS
        step = time.perf_counter()
        llm.eval(ids[start : start + PROBE_CHUNK_TOKENS])
        chunk_s.append(_since(step))
    prompt = len(chunk_s) * PROBE_CHUNK_TOKENS
    prefill_s = min(chunk_s) * len(chunk_s)
    token_s: list[float] = []
    begun = time.perf_counter()
    while len(token_s) < DECODE_TOKENS and (len(token_s) < 4 or _since(begun) < PHASE_S):
        step = time.perf_counter()
        llm.eval([ids[len(token_s)]])
        token_s.append(_since(step))
    written = len(token_s)
    decode_s = sorted(token_s)[written // 4] * written  # the lower quartile's pace
    llm.close()
    speed = llamacpp_speed(spec, prompt, prefill_s, written, decode_s)
    return dataclasses.replace(speed, probe={"model": path.name, "threads": threads, **speed.probe})


def llamacpp_speed(
    spec: ModelSpec, prompt_tokens: int, prefill_s: float, decode_tokens: int, decode_s: float
) -> MachineSpeed:
    """llama.cpp's speed on this machine from one model's timings: a prompt of
    `prompt_tokens` read in `prefill_s`, then `decode_tokens` written in `decode_s`."""
    layer_work = LLAMACPP_PREFILL_LAYER_FLOPS * spec.layers * prompt_tokens
    read = decode_bytes_per_token(spec, LLAMACPP, prompt_tokens + decode_tokens // 2)
    return MachineSpeed(
        engine="llamacpp",
        backend="cpu",
        prefill_flops_per_s=(prefill_flops(spec, prompt_tokens) + layer_work) / prefill_s,
        decode_bytes_per_s=(read + LLAMACPP_DECODE_LAYER_BYTES * spec.layers)
        * decode_tokens
        / decode_s,
        source="measured",
        prefill_layer_flops=LLAMACPP_PREFILL_LAYER_FLOPS,
        decode_layer_bytes=LLAMACPP_DECODE_LAYER_BYTES,
        probe={
            "prompt_tokens": prompt_tokens,
            "prefill_s": round(prefill_s, 4),
            "prefill_tokens_per_s": round(prompt_tokens / prefill_s, 1),
            "decode_tokens": decode_tokens,
            "decode_tokens_per_s": round(decode_tokens / decode_s, 1),
        },
    )


def _probe_mlx(threads: int) -> MachineSpeed:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    on_cpu = mx.default_device() == mx.cpu
    # MLX's CPU kernels take ~1 s for 16 tokens here; a GPU needs a real prompt to be busy.
    hidden, width, layers, prompt = 2048, 5632, 4, 16 if on_cpu else 512

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = [
                nn.Linear(hidden, width, bias=False)
                if i % 2 == 0
                else nn.Linear(width, hidden, bias=False)
                for i in range(layers)
            ]

        def __call__(self, x: Any) -> Any:
            for layer in self.layers:
                x = layer(x)
            return x

    model = Stack()
    nn.quantize(model, group_size=64, bits=4)
    model.set_dtype(mx.bfloat16)
    tune_model(model, threads)  # fp32 and split matmuls on the CPU; nothing elsewhere
    mx.eval(model.parameters())
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))  # type: ignore[union-attr,str-unpack]  # (name, array) pairs
    dtype = model.layers[0].scales.dtype

    def run(tokens: int, repeats: int) -> float:
        x = mx.random.normal((1, tokens, hidden)).astype(dtype)
        mx.eval(model(x))  # warm-up
        begun = time.perf_counter()
        for _ in range(repeats):
            mx.eval(model(x))
        return (time.perf_counter() - begun) / repeats

    matmul_flops = 2 * prompt * layers * hidden * width
    prefill_s = run(prompt, 1)
    decode_s = run(1, 8)
    backend = "cpu" if on_cpu else _gpu_backend()
    return MachineSpeed(
        engine="mlx",
        backend=backend,
        prefill_flops_per_s=matmul_flops / prefill_s,
        # On Metal the chip's published bandwidth predicts decode (rag.models.hardware).
        decode_bytes_per_s=None if backend == "metal" else weight_bytes / decode_s,
        source="measured",
        probe={
            "model": f"{layers} x 4-bit {hidden}x{width} linear layers",
            "threads": threads,
            "prompt_tokens": prompt,
            "prefill_s": round(prefill_s, 4),
            "decode_s": round(decode_s, 5),
            "weight_bytes": weight_bytes,
        },
    )


def _since(begun: float) -> float:
    return time.perf_counter() - begun


def _gpu_backend() -> str:
    import mlx.core as mx

    return "metal" if mx.metal.is_available() else "cuda"


def speed_engine(settings: LlmSettings) -> str | None:
    """The engine llm.engine runs here, for the probe; None for a remote server."""
    choice = choose_engine(settings)
    return choice.kind if choice.local else None


def probe_model(engine: str) -> PackagedModel | None:
    """The model llama.cpp's probe runs: the largest installed packaged one.

    Predictions for models of its size then rest on its own timings rather than on a 135M
    model's, whose per-layer overheads dominate; installing a larger one measures again.
    """
    if engine != "llamacpp":
        return None
    return next(iter(installed_models()), None)


def speed_for(
    settings: Settings, hardware: Hardware, *, measure: bool = False
) -> MachineSpeed | None:
    """The speed the planner predicts with: the chip tables for a simulated machine, this
    machine's probe (cached) otherwise; None where nothing predicts it (a remote engine, an
    unknown simulated chip)."""
    if hardware.simulated:
        return table_speed(hardware)
    engine = speed_engine(settings.llm)
    if engine is None:
        return None
    largest = probe_model(engine)
    identity = hardware_identity(
        hardware.chip,
        hardware.total_memory_bytes,
        hardware.backend,
        engine,
        settings.llm.cpu_threads,
        largest.name if largest else "",
    )
    directory = settings.hardware.speed_cache_path
    cached = None if measure else cached_speed(directory, identity)
    if cached is not None:
        return cached
    # Only now the model's path: a packaged model is joined on first use.
    probe_path = largest.path(settings.llm.cache_path) if largest is not None else None
    return machine_speed(directory, identity, measure=True, model_path=probe_path)

"""The memory planner: does a model fit this machine, with how much context, how fast.

Pure functions of a Hardware and a ModelSpec; nothing here reads a file or loads a model.
The memory model follows how mlx-lm 0.32 runs a model (reference/mlx.md sections 1-2):

    peak = weights + sequences x KV cache(context) + prefill activations(context)

- Weights as MLX holds them: packed values plus a scale and a bias per group; on the CPU
  backend the engine casts the model to fp32, which doubles scales, biases and dense tensors.
- The KV cache grows in 256-token steps; sliding-window layers stop at their window. Its
  elements are in the activation dtype (fp32 on CPU and for GGUF files), or packed to 8/4
  bits with per-64 scales and biases when quantized.
- Prefill runs in chunks of 2048 tokens. Each chunk holds its activations; where attention
  is not fused (CPU, CUDA, head dims Metal's kernel lacks, quantized KV) it also holds the
  chunk-by-context score matrix. Coefficients measured on mlx 0.32.4 (tests/test_planner.py
  checks the whole prediction against mx.get_peak_memory).
- MLX's cache of freed buffers is left out: mlx-lm empties it after every prefill chunk, and
  on the CPU backend it is capped at 32 MiB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rag.config import Settings
from rag.errors import InsufficientMemoryError
from rag.models.hardware import GIB, Hardware, format_bytes
from rag.models.spec import ModelSpec
from rag.models.speed import MachineSpeed

KV_STEP_TOKENS = 256  # mlx-lm's KVCache.step
PREFILL_STEP_TOKENS = 2048  # mlx-lm's prefill_step_size
KV_GROUP_SIZE = 64  # mlx-lm's kv_group_size
# Below this a question with even one passage and an answer no longer fits.
MIN_SERVING_CONTEXT_TOKENS = 1024
# Prompt room (template, question, one passage) a served context keeps besides the answer.
MIN_PROMPT_TOKENS = 512
# What a model must hold to be worth recommending: a long question over several passages.
USEFUL_CONTEXT_TOKENS = 8192
# Head dims of Metal's fused prefill attention kernel in mlx 0.32 (sdpa_full_supported_head_dim).
FUSED_PREFILL_HEAD_DIMS = frozenset({64, 80, 128})
# Decode is memory-bound: each token reads the active weights and the KV cache once. A narrow
# bus delivers ~90% of its peak; wide ones are held back by how fast the GPU issues loads,
# modelled as a 600 GB/s ceiling combined harmonically. Fit to llama.cpp's published M-series
# 7B Q4_0 decode figures (discussion #4167), which it matches to ~15%, on the low side.
DECODE_BUS_EFFICIENCY = 0.9
DECODE_CEILING_BYTES_PER_S = 600e9
# Pseudo-backend of the figures llama.cpp reads: weights as stored in the file, F16 KV cache.
LLAMACPP = "llamacpp"
# The prompt a RAG request sends (system prompt, passages, question): llm.typical_prompt_tokens.
TYPICAL_PROMPT_TOKENS = 1000


@dataclass(frozen=True)
class Plan:
    """How one model runs on one machine; `fits` is False with the reason when it cannot."""

    model: str
    params: int
    text_params: int  # without a vision tower: what "largest model" compares
    bits: int
    fits: bool
    reason: str
    backend: str
    budget_bytes: int
    budget_rule: str  # which bound set the budget
    weights_bytes: int
    embedder_bytes: int
    kv_bits: int | None  # None: the KV cache is kept unquantized, in the activation dtype
    kv_bytes_per_token: int
    max_context_tokens: int  # for `concurrent_sequences` sequences at once
    concurrent_sequences: int
    context_tokens: int  # the context a request gets: the configured one, capped
    max_concurrent_sequences: int  # sequences of context_tokens that fit at once
    prefill_bytes: int  # activations of the largest prefill chunk at context_tokens
    peak_bytes: int  # everything at context_tokens, embedder included
    decode_tokens_per_s: float | None  # None where bandwidth does not predict speed
    # Speed at a typical RAG prompt, from the machine's measured (or tabled) speed; None
    # where nothing predicts it.
    prompt_tokens: int = TYPICAL_PROMPT_TOKENS
    ttft_s: float | None = None
    prefill_tokens_per_s: float | None = None
    typical_decode_tokens_per_s: float | None = None  # decode right after that prompt
    speed_source: str = ""  # what the speed figures come from

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def activation_bytes(spec: ModelSpec, backend: str) -> int:
    if backend == LLAMACPP:
        return 2  # llama.cpp keeps its KV cache in F16 whatever the weights
    return 4 if backend == "cpu" or spec.fp32_activations else 2


def weights_bytes(spec: ModelSpec, backend: str) -> int:
    """Bytes the weights occupy once loaded."""
    stored = spec.gguf_weights_bytes
    if backend == LLAMACPP and stored:
        return stored  # llama.cpp holds a GGUF's tensors as the file stores them
    cpu = backend == "cpu"
    scale_bytes = 4 if cpu else spec.scale_bytes
    total = spec.dense_params * 4 if cpu else spec.dense_stored_bytes
    total += sum(count * bits // 8 for bits, count in spec.quantized_params)
    groups = spec.quantized_groups or sum(
        count // spec.group_size for _, count in spec.quantized_params
    )
    return total + groups * 2 * scale_bytes


def active_weights_bytes(spec: ModelSpec, backend: str) -> int:
    """Bytes of weights read for each decoded token (no vision tower, only routed experts)."""
    total = weights_bytes(spec, backend)
    read = spec.active_params or spec.text_params
    return total * read // spec.params if spec.params else total


def kv_element_bytes(spec: ModelSpec, backend: str, kv_bits: int | None = None) -> float:
    act = activation_bytes(spec, backend)
    if kv_bits is None:
        return float(act)
    # QuantizedKVCache: packed values plus a scale and a bias per group, in the activation dtype.
    return kv_bits / 8 + 2 * act / KV_GROUP_SIZE


def kv_bytes_per_token(spec: ModelSpec, backend: str, kv_bits: int | None = None) -> int:
    """KV bytes each further token of context costs, in the layers that keep every token."""
    full_layers = spec.layers - spec.sliding_layers
    return round(
        2 * full_layers * spec.kv_heads * spec.head_dim * kv_element_bytes(spec, backend, kv_bits)
    )


def kv_bytes(spec: ModelSpec, context_tokens: int, backend: str, kv_bits: int | None = None) -> int:
    """KV cache allocated for one sequence of `context_tokens` (256-token steps)."""
    allocated = -(-context_tokens // KV_STEP_TOKENS) * KV_STEP_TOKENS
    per_layer_token = 2 * spec.kv_heads * spec.head_dim * kv_element_bytes(spec, backend, kv_bits)
    full_layers = spec.layers - spec.sliding_layers
    windowed = min(allocated, spec.sliding_window_tokens)
    return round(per_layer_token * (full_layers * allocated + spec.sliding_layers * windowed))


def prefill_bytes(
    spec: ModelSpec,
    prompt_tokens: int,
    backend: str,
    kv_bits: int | None = None,
    prefill_step_tokens: int = PREFILL_STEP_TOKENS,
) -> int:
    """Activations alive while the last prefill chunk of a prompt runs through one layer."""
    chunk = min(prompt_tokens, prefill_step_tokens)
    act = activation_bytes(spec, backend)
    q_dim = spec.attention_heads * spec.head_dim
    kv_dim = spec.kv_heads * spec.head_dim
    # Per chunk token: the MLP's gate and up projections, the attention's inputs, q/k/v,
    # their rotated copies and outputs (fit over four layer shapes on mlx 0.32.4).
    total = chunk * act * (2 * spec.intermediate_size + 6 * (spec.hidden_size + q_dim) + 3 * kv_dim)
    fused = backend == "metal" and spec.head_dim in FUSED_PREFILL_HEAD_DIMS and kv_bits is None
    if not fused:
        total += act * spec.attention_heads * chunk * prompt_tokens
    if spec.sliding_layers:
        # A RotatingKVCache holds window + chunk - 1 tokens while a chunk goes through.
        per_layer_token = 2 * spec.kv_heads * spec.head_dim * act
        total += spec.sliding_layers * per_layer_token * (chunk - 1)
    return total


def peak_bytes(
    spec: ModelSpec,
    backend: str,
    prompt_tokens: int,
    answer_tokens: int,
    kv_bits: int | None = None,
    concurrent_sequences: int = 1,
) -> int:
    """Peak MLX memory (mx.get_peak_memory) of generating an answer to one prompt."""
    return (
        weights_bytes(spec, backend)
        + concurrent_sequences * kv_bytes(spec, prompt_tokens + answer_tokens, backend, kv_bits)
        + prefill_bytes(spec, prompt_tokens, backend, kv_bits)
    )


def max_context_tokens(
    spec: ModelSpec,
    backend: str,
    free_bytes: int,
    concurrent_sequences: int = 1,
    kv_bits: int | None = None,
) -> int:
    """The longest context (a multiple of 256, at most the model's) that fits `free_bytes`."""

    def need(tokens: int) -> int:
        return concurrent_sequences * kv_bytes(spec, tokens, backend, kv_bits) + prefill_bytes(
            spec, tokens, backend, kv_bits
        )

    if need(spec.max_context_tokens) <= free_bytes:
        return spec.max_context_tokens
    low, high = 0, spec.max_context_tokens // KV_STEP_TOKENS  # steps; need(high) > free
    while high - low > 1:
        middle = (low + high) // 2
        if need(middle * KV_STEP_TOKENS) <= free_bytes:
            low = middle
        else:
            high = middle
    return low * KV_STEP_TOKENS


def decode_bytes_per_token(
    spec: ModelSpec, backend: str, context_tokens: int, kv_bits: int | None = None
) -> float:
    """Bytes one decoded token reads: the active weights and the KV cache at `context_tokens`."""
    per_layer_token = 2 * spec.kv_heads * spec.head_dim * kv_element_bytes(spec, backend, kv_bits)
    full_layers = spec.layers - spec.sliding_layers
    windowed = min(context_tokens, spec.sliding_window_tokens)
    kv_read = per_layer_token * (full_layers * context_tokens + spec.sliding_layers * windowed)
    return active_weights_bytes(spec, backend) + kv_read


def decode_tokens_per_s(
    spec: ModelSpec,
    hardware: Hardware,
    context_tokens: int,
    kv_bits: int | None = None,
    speed: MachineSpeed | None = None,
) -> float | None:
    """Expected decode speed at `context_tokens` of context, from memory bandwidth.

    A measured bandwidth (`speed`) wins; else the chip's published bus, except on MLX's CPU
    backend, whose kernels are compute-bound, so the bus says nothing about their speed.
    """
    backend = hardware.backend
    if speed is not None and speed.decode_bytes_per_s:
        # llama.cpp reads the weights as stored, the way the probe's figure was taken.
        held = backend if speed.engine == "mlx" else LLAMACPP
        per_token = decode_bytes_per_token(spec, held, context_tokens, kv_bits)
        return speed.decode_bytes_per_s / (per_token + speed.decode_layer_bytes * spec.layers)
    bandwidth = hardware.memory_bandwidth_bytes_per_s
    if bandwidth is None or backend == "cpu":
        return None
    effective = 1 / (1 / (DECODE_BUS_EFFICIENCY * bandwidth) + 1 / DECODE_CEILING_BYTES_PER_S)
    return effective / decode_bytes_per_token(spec, backend, context_tokens, kv_bits)


def prefill_flops(spec: ModelSpec, prompt_tokens: int) -> float:
    """FLOPs of reading a prompt: 2 per weight and token for the matmuls (the embedding is a
    lookup and the output head runs for the last token only), plus attention's 4 per query
    dim for each earlier token each token attends to."""
    matmul_params = max(
        0, (spec.active_params or spec.text_params) - spec.vocab_size * spec.hidden_size
    )
    q_dim = spec.attention_heads * spec.head_dim
    full_layers = spec.layers - spec.sliding_layers
    window = spec.sliding_window_tokens
    # Sum over the prompt's positions of the tokens each attends to (capped at the window).
    attended_full = prompt_tokens * (prompt_tokens - 1) / 2
    if prompt_tokens <= window:
        attended_window = attended_full
    else:
        attended_window = window * (window - 1) / 2 + (prompt_tokens - window) * window
    attended = full_layers * attended_full + spec.sliding_layers * attended_window
    return 2 * matmul_params * prompt_tokens + 4 * q_dim * attended


def ttft_s(spec: ModelSpec, speed: MachineSpeed, prompt_tokens: int) -> float | None:
    """Seconds from a prompt of `prompt_tokens` to the first answer token."""
    if not speed.prefill_flops_per_s:
        return None
    layer_work = speed.prefill_layer_flops * spec.layers * prompt_tokens
    return (prefill_flops(spec, prompt_tokens) + layer_work) / speed.prefill_flops_per_s


def budget_bytes(hardware: Hardware, os_headroom_bytes: int) -> tuple[int, str]:
    """(bytes the model, its caches and the embedder may use, which bound set it)."""
    first = {"metal": "GPU working set", "cuda": "free GPU memory"}.get(hardware.backend, "memory")
    bounds = [(hardware.gpu_budget_bytes, first)]
    if hardware.backend != "cuda":
        # Unified memory and the CPU backend share RAM with the OS and other programs.
        bounds.append(
            (
                hardware.total_memory_bytes - os_headroom_bytes,
                f"memory - OS headroom {format_bytes(os_headroom_bytes)}",
            )
        )
    if hardware.memory_limit_bytes:
        bounds.append((hardware.memory_limit_bytes, "hardware.memory_limit_gb"))
    return min(bounds, key=lambda bound: bound[0])


def plan(
    hardware: Hardware,
    spec: ModelSpec,
    *,
    os_headroom_bytes: int,
    embedder_bytes: int = 0,
    context_tokens: int = USEFUL_CONTEXT_TOKENS,
    concurrent_sequences: int = 1,
    kv_bits: int | None = None,
    min_context_tokens: int = MIN_SERVING_CONTEXT_TOKENS,
    speed: MachineSpeed | None = None,
    prompt_tokens: int = TYPICAL_PROMPT_TOKENS,
) -> Plan:
    """Plan `spec` on `hardware`: it fits when `min_context_tokens` of context fit.

    With the machine's `speed` it also predicts the time to first token of a
    `prompt_tokens` prompt and the decode rate just after it.
    """
    backend = hardware.backend
    budget, rule = budget_bytes(hardware, os_headroom_bytes)
    weights = weights_bytes(spec, backend)
    free = budget - weights - embedder_bytes
    max_context = max_context_tokens(spec, backend, free, concurrent_sequences, kv_bits)
    if free <= 0:
        max_context = 0
    context = min(context_tokens, max_context)
    prefill = prefill_bytes(spec, context, backend, kv_bits)
    per_sequence = kv_bytes(spec, context, backend, kv_bits)
    sequences = (free - prefill) // per_sequence if context and per_sequence else 0
    reason = ""
    if kv_bits is not None and spec.sliding_layers:
        reason = "mlx-lm cannot quantize the KV cache of sliding-window layers; use kv_bits None"
    elif spec.max_context_tokens < min_context_tokens:
        reason = (
            f"its context is {spec.max_context_tokens:,} tokens, under the "
            f"{min_context_tokens:,} needed"
        )
    elif max_context < min_context_tokens:
        need_kv = concurrent_sequences * kv_bytes(spec, min_context_tokens, backend, kv_bits)
        need_prefill = prefill_bytes(spec, min_context_tokens, backend, kv_bits)
        need = weights + embedder_bytes + need_kv + need_prefill
        reason = (
            f"needs {format_bytes(need)} for {min_context_tokens:,} tokens of context "
            f"(weights {format_bytes(weights)} + embedder {format_bytes(embedder_bytes)} + "
            f"KV cache {format_bytes(need_kv)} + prefill {format_bytes(need_prefill)}), over "
            f"the {format_bytes(budget)} budget ({rule})"
            + (f"; only {max_context:,} tokens of context fit" if max_context else "")
        )
    return Plan(
        model=spec.name,
        params=spec.params,
        text_params=spec.text_params,
        bits=spec.bits,
        fits=not reason,
        reason=reason,
        backend=backend,
        budget_bytes=budget,
        budget_rule=rule,
        weights_bytes=weights,
        embedder_bytes=embedder_bytes,
        kv_bits=kv_bits,
        kv_bytes_per_token=kv_bytes_per_token(spec, backend, kv_bits),
        max_context_tokens=max_context,
        concurrent_sequences=concurrent_sequences,
        context_tokens=context,
        max_concurrent_sequences=max(0, sequences),
        prefill_bytes=prefill,
        peak_bytes=weights + embedder_bytes + concurrent_sequences * per_sequence + prefill,
        decode_tokens_per_s=decode_tokens_per_s(spec, hardware, context, kv_bits, speed),
        **_speed_fields(spec, hardware, speed, prompt_tokens, kv_bits),
    )


def _speed_fields(
    spec: ModelSpec,
    hardware: Hardware,
    speed: MachineSpeed | None,
    prompt_tokens: int,
    kv_bits: int | None,
) -> dict[str, Any]:
    first = ttft_s(spec, speed, prompt_tokens) if speed is not None else None
    decode = decode_tokens_per_s(spec, hardware, prompt_tokens, kv_bits, speed)
    sources = []
    if first is not None and speed is not None:
        sources.append(f"prefill: {speed.source}")
    if decode is not None:
        measured = speed is not None and speed.decode_bytes_per_s
        sources.append(f"decode: {speed.source if measured and speed else 'chip bandwidth'}")
    return {
        "prompt_tokens": prompt_tokens,
        "ttft_s": first,
        "prefill_tokens_per_s": prompt_tokens / first if first else None,
        "typical_decode_tokens_per_s": decode,
        "speed_source": "; ".join(sources),
    }


def plan_served(
    hardware: Hardware,
    spec: ModelSpec,
    settings: Settings,
    embedder_bytes: int,
    speed: MachineSpeed | None = None,
) -> Plan:
    """The plan `rag ask` and `rag serve` run the configured model under."""
    return plan(
        hardware,
        spec,
        os_headroom_bytes=int(settings.hardware.os_headroom_gb * GIB),
        embedder_bytes=embedder_bytes,
        context_tokens=settings.llm.context_tokens,
        kv_bits=settings.llm.kv_bits or None,
        # Room for the answer and a prompt with one passage, at least; never more than asked.
        min_context_tokens=min(
            settings.llm.context_tokens,
            max(MIN_SERVING_CONTEXT_TOKENS, settings.llm.answer_tokens + MIN_PROMPT_TOKENS),
        ),
        speed=speed,
        prompt_tokens=settings.llm.typical_prompt_tokens,
    )


def best_fit(plans: Iterable[Plan]) -> Plan | None:
    """The largest language model that fits; among equals, the one with the longest context."""
    fitting = [p for p in plans if p.fits]
    return max(fitting, key=lambda p: (p.text_params, p.max_context_tokens), default=None)


def choose_model(
    hardware: Hardware,
    catalog: Iterable[ModelSpec],
    min_context_tokens: int = USEFUL_CONTEXT_TOKENS,
    available: set[str] | None = None,
    *,
    os_headroom_bytes: int = 4 * GIB,
    embedder_bytes: int = 0,
) -> Plan | None:
    """The largest catalog model (of `available` ones, when given) with a useful context."""
    return best_fit(
        plan(
            hardware,
            spec,
            os_headroom_bytes=os_headroom_bytes,
            embedder_bytes=embedder_bytes,
            context_tokens=min_context_tokens,
            min_context_tokens=min_context_tokens,
        )
        for spec in catalog
        if available is None or spec.name in available
    )


def require_fit(plan: Plan) -> None:
    """Refuse, with the numbers, a plan that does not fit."""
    if not plan.fits:
        raise InsufficientMemoryError(f"{plan.model} does not fit this machine: {plan.reason}")

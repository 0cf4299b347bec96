"""Sizing: what runs on this machine, for `rag plan`, `GET /api/plan` and model loading.

This is where the planner meets the world: it detects (or simulates) the hardware, reads the
models' metadata and hands both to the pure functions in rag.planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.catalog import CATALOG, cached_hub_ids, read_model_spec
from rag.config import Settings
from rag.errors import RagError
from rag.hardware import GB, GIB, Hardware, resolve_hardware
from rag.modelspec import embedder_weights_bytes
from rag.planner import (
    USEFUL_CONTEXT_TOKENS,
    Plan,
    best_fit,
    budget_bytes,
    format_bytes,
    plan,
    plan_served,
)


@dataclass(frozen=True)
class Sizing:
    hardware: Hardware
    budget_bytes: int
    budget_rule: str
    os_headroom_bytes: int
    embedder_bytes: int
    configured_model: str
    configured: Plan | None  # None when the configured model cannot be read
    configured_error: str
    chosen: Plan | None  # the largest catalog model with a useful context, if any fits
    models: tuple[Plan, ...]  # every catalog model, planned for a useful context
    local: frozenset[str]  # catalog models already in the Hugging Face cache

    def to_json(self) -> dict[str, Any]:
        configured = (
            self.configured.to_json()
            if self.configured
            else {"model": self.configured_model, "error": self.configured_error}
        )
        return {
            "hardware": self.hardware.to_json(),
            "budget_bytes": self.budget_bytes,
            "budget_rule": self.budget_rule,
            "os_headroom_bytes": self.os_headroom_bytes,
            "embedder_bytes": self.embedder_bytes,
            "configured": configured,
            "chosen": self.chosen.to_json() if self.chosen else None,
            "models": [{**p.to_json(), "local": p.model in self.local} for p in self.models],
        }


def plan_configured(settings: Settings, hardware: Hardware) -> Plan:
    """The configured LLM planned on `hardware`, from its metadata alone."""
    return plan_served(
        hardware,
        read_model_spec(settings.llm.model),
        settings,
        embedder_weights_bytes(settings.embedding),
    )


def size_machine(
    settings: Settings,
    memory_gb: float | None = None,
    chip: str | None = None,
    kv_bits: int | None = None,
) -> Sizing:
    """Plan the configured model and every catalog model on this (or a simulated) machine."""
    hardware = resolve_hardware(settings.hardware, memory_gb, chip)
    headroom = int(settings.hardware.os_headroom_gb * GIB)
    embedder = embedder_weights_bytes(settings.embedding)
    budget, rule = budget_bytes(hardware, headroom)
    configured: Plan | None = None
    error = ""
    try:
        configured = plan_configured(settings, hardware)
    except RagError as e:
        error = e.message
    models = tuple(
        plan(
            hardware,
            spec,
            os_headroom_bytes=headroom,
            embedder_bytes=embedder,
            context_tokens=USEFUL_CONTEXT_TOKENS,
            kv_bits=kv_bits,
            min_context_tokens=USEFUL_CONTEXT_TOKENS,
        )
        for spec in CATALOG
    )
    return Sizing(
        hardware=hardware,
        budget_bytes=budget,
        budget_rule=rule,
        os_headroom_bytes=headroom,
        embedder_bytes=embedder,
        configured_model=settings.llm.model,
        configured=configured,
        configured_error=error,
        chosen=best_fit(models),
        models=models,
        local=frozenset(cached_hub_ids()),
    )


def render_sizing(sizing: Sizing) -> str:
    """The plan as text for a terminal."""
    hw = sizing.hardware
    bandwidth = (
        f", {hw.memory_bandwidth_bytes_per_s / GB:.0f} GB/s"
        if hw.memory_bandwidth_bytes_per_s
        else ", bandwidth unknown"
    )
    lines = [
        f"Machine     {hw.chip}{' (simulated)' if hw.simulated else ''}: {hw.backend} backend, "
        f"{format_bytes(hw.total_memory_bytes)} memory, accelerator budget "
        f"{format_bytes(hw.gpu_budget_bytes)}{bandwidth}",
        f"Budget      {format_bytes(sizing.budget_bytes)} ({sizing.budget_rule}); the embedder "
        f"takes {format_bytes(sizing.embedder_bytes)}",
    ]
    if sizing.configured is not None:
        lines.append(f"Configured  {_describe(sizing.configured)}")
    else:
        lines.append(f"Configured  {sizing.configured_model}: {sizing.configured_error}")
    if sizing.chosen is not None:
        lines.append(f"Best fit    {_describe(sizing.chosen)}")
    else:
        lines.append(f"Best fit    none: no catalog model fits {USEFUL_CONTEXT_TOKENS:,} tokens")
    lines += ["", f"Catalog, each planned for {USEFUL_CONTEXT_TOKENS:,} tokens of context:"]
    lines.append(
        f"  {'model':50} {'params':>7} {'weights':>10} {'KV/token':>9} {'max ctx':>8} "
        f"{'tok/s':>6}  fits"
    )
    for p in sizing.models:
        speed = f"{p.decode_tokens_per_s:.0f}" if p.decode_tokens_per_s else "-"
        local = ", local" if p.model in sizing.local else ""
        lines.append(
            f"  {p.model:50} {p.text_params / 1e9:6.1f}B {format_bytes(p.weights_bytes):>10} "
            f"{format_bytes(p.kv_bytes_per_token):>9} {p.max_context_tokens:>8,} {speed:>6}  "
            f"{'yes' if p.fits else 'no'}{local}"
        )
    larger = [
        p
        for p in sizing.models
        if not p.fits and (sizing.chosen is None or p.text_params > sizing.chosen.text_params)
    ]
    if larger:
        lines += ["", "Why the larger ones do not fit:"]
        lines += [f"  {p.model}: {p.reason}" for p in larger]
    return "\n".join(lines)


def _describe(p: Plan) -> str:
    if not p.fits:
        return f"{p.model}: does not fit: {p.reason}"
    speed = (
        f", ~{p.decode_tokens_per_s:.0f} tokens/s"
        if p.decode_tokens_per_s
        else " (no speed estimate: bandwidth unknown or CPU backend)"
    )
    kv = "unquantized" if p.kv_bits is None else f"{p.kv_bits}-bit"
    return (
        f"{p.model}: weights {format_bytes(p.weights_bytes)}, KV cache "
        f"{format_bytes(p.kv_bytes_per_token)}/token ({kv}), max context "
        f"{p.max_context_tokens:,} tokens; {p.max_concurrent_sequences} requests of "
        f"{p.context_tokens:,} tokens fit at once{speed}"
    )

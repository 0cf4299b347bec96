"""Sizing: what runs on this machine, for `rag plan`, `GET /api/plan` and model loading.

This is where the planner meets the world: it detects (or simulates) the hardware, reads the
models' metadata and hands both to the pure functions in rag.models.planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.config import Settings
from rag.errors import RagError
from rag.llm.choice import (
    AUTO,
    Choice,
    choose_model_spec,
    installed_candidates,
    plan_candidates,
    resolve_model,
    too_slow,
)
from rag.llm.probe import speed_for
from rag.models.catalog import CATALOG, cached_hub_ids, read_model_spec
from rag.models.hardware import GB, GIB, Hardware, format_bytes, resolve_hardware
from rag.models.planner import (
    USEFUL_CONTEXT_TOKENS,
    Plan,
    best_fit,
    budget_bytes,
    plan,
    plan_served,
)
from rag.models.spec import embedder_weights_bytes
from rag.models.speed import MachineSpeed


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
    speed: MachineSpeed | None = None  # what the speed predictions come from
    speed_error: str = ""  # why there is no speed, when the probe failed
    targets: tuple[float, float] = (0.0, 0.0)  # llm.target_ttft_s, llm.target_tokens_per_s
    auto: Choice | None = None  # what llm.model = "auto" takes among the installed models
    installed: tuple[tuple[str, Plan], ...] = ()  # (llm.model value, plan as served)
    measured: dict[str, dict[str, float]] | None = None  # recent answers' medians per model
    # The largest catalog model that fits and is predicted to meet the speed targets.
    fast_fit: Plan | None = None

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
            "fast_fit": self.fast_fit.to_json() if self.fast_fit else None,
            "models": [
                {**p.to_json(), "local": p.model in self.local, "too_slow": self._slow(p)}
                for p in self.models
            ],
            "speed": self.speed.to_json() if self.speed else None,
            "speed_error": self.speed_error,
            "targets": {"ttft_s": self.targets[0], "tokens_per_s": self.targets[1]},
            "auto": self.auto.to_json() if self.auto else None,
            "installed": [
                {
                    **p.to_json(),
                    "spec": model,
                    "too_slow": self._slow(p),
                    "measured": measured_for(self.measured or {}, p.model),
                }
                for model, p in self.installed
            ],
        }

    def _slow(self, p: Plan) -> str:
        return too_slow(p, *self.targets) if p.fits else ""


def measured_for(measured: dict[str, dict[str, float]], model: str) -> dict[str, float] | None:
    """The recent answers' medians of `model` (a plan's name; the ledger keeps the engine's)."""
    return measured.get(model) or next(
        (v for k, v in measured.items() if k.rsplit("/", 1)[-1] == model.rsplit("/", 1)[-1]),
        None,
    )


def plan_configured(
    settings: Settings, hardware: Hardware, speed: MachineSpeed | None = None
) -> Plan:
    """The configured LLM planned on `hardware`, from its metadata alone ("auto" resolved)."""
    model = settings.llm.model
    if model == AUTO:
        model = resolve_model(settings, hardware)
    return plan_served(
        hardware,
        read_model_spec(model),
        settings,
        embedder_weights_bytes(settings.embedding),
        speed,
    )


def size_machine(
    settings: Settings,
    memory_gb: float | None = None,
    chip: str | None = None,
    kv_bits: int | None = None,
    measure: bool = False,
    measured: dict[str, dict[str, float]] | None = None,
) -> Sizing:
    """Plan the configured model, the installed ones and every catalog model on this (or a
    simulated) machine, for memory and for speed; `measured` holds the recent answers' speeds
    per model (rag.accounts.usage.recent_speeds) to set against the predictions."""
    hardware = resolve_hardware(settings.hardware, memory_gb, chip)
    headroom = int(settings.hardware.os_headroom_gb * GIB)
    embedder = embedder_weights_bytes(settings.embedding)
    budget, rule = budget_bytes(hardware, headroom)
    speed: MachineSpeed | None = None
    speed_error = ""
    try:
        speed = speed_for(settings, hardware, measure=measure)
    except RagError as e:
        speed_error = e.message
    installed = tuple(plan_candidates(hardware, installed_candidates(), settings, embedder, speed))
    targets = (settings.llm.target_ttft_s, settings.llm.target_tokens_per_s)
    auto = choose_model_spec(installed, *targets, settings.llm.answer_tokens)
    configured: Plan | None = None
    error = ""
    try:
        if settings.llm.model == AUTO and auto.plan is not None:
            configured = auto.plan
        else:
            configured = plan_configured(settings, hardware, speed)
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
            speed=speed,
            prompt_tokens=settings.llm.typical_prompt_tokens,
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
        speed=speed,
        speed_error=speed_error,
        targets=targets,
        auto=auto,
        installed=installed,
        measured=measured or {},
        fast_fit=best_fit(p for p in models if not too_slow(p, *targets)),
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
    lines.append(f"Speed       {_describe_speed(sizing)}")
    ttft, rate = sizing.targets
    prompt = sizing.installed[0][1].prompt_tokens if sizing.installed else 0
    lines.append(
        f"Targets     first token within {ttft:g} s for a {prompt:,}-token prompt, "
        f"{rate:g} tokens/s (llm.target_ttft_s, llm.target_tokens_per_s)"
    )
    if sizing.configured is not None:
        lines.append(f"Configured  {_describe(sizing.configured)}")
    else:
        lines.append(f"Configured  {sizing.configured_model}: {sizing.configured_error}")
    if sizing.chosen is not None:
        lines.append(f"Best fit    {_describe(sizing.chosen)}")
    else:
        lines.append(f"Best fit    none: no catalog model fits {USEFUL_CONTEXT_TOKENS:,} tokens")
    if sizing.speed is not None and sizing.fast_fit != sizing.chosen:
        fast = sizing.fast_fit
        lines.append(
            f"Fast fit    {_describe(fast)}"
            if fast is not None
            else "Fast fit    none: no catalog model that fits meets the speed targets"
        )
    lines += _installed_lines(sizing)
    lines += ["", f"Catalog, each planned for {USEFUL_CONTEXT_TOKENS:,} tokens of context:"]
    lines.append(
        f"  {'model':50} {'params':>7} {'weights':>10} {'KV/token':>9} {'max ctx':>8} "
        f"{'tok/s':>6} {'TTFT':>7}  fits"
    )
    for p in sizing.models:
        speed = _num(p.decode_tokens_per_s, ".1f" if (p.decode_tokens_per_s or 0) < 10 else ".0f")
        first = f"{p.ttft_s:.1f}s" if p.ttft_s is not None else "-"
        local = ", local" if p.model in sizing.local else ""
        lines.append(
            f"  {p.model:50} {p.text_params / 1e9:6.1f}B {format_bytes(p.weights_bytes):>10} "
            f"{format_bytes(p.kv_bytes_per_token):>9} {p.max_context_tokens:>8,} {speed:>6} "
            f"{first:>7}  {'yes' if p.fits else 'no'}{local}"
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


def _describe_speed(sizing: Sizing) -> str:
    speed = sizing.speed
    if speed is None:
        return "not predicted" + (
            f": {sizing.speed_error}"
            if sizing.speed_error
            else " (a remote engine, or a simulated chip with no table entry)"
        )
    decode = (
        f"decode {speed.decode_bytes_per_s / GB:.1f} GB/s"
        if speed.decode_bytes_per_s
        else "decode from the chip's bandwidth"
    )
    again = "" if sizing.hardware.simulated else "; `rag plan --measure` measures again"
    return (
        f"{speed.engine} on {speed.backend}: prefill {speed.prefill_flops_per_s / 1e9:.1f} "
        f"GFLOP/s, {decode} ({speed.source}{again})"
    )


def _installed_lines(sizing: Sizing) -> list[str]:
    """Installed models: predicted against measured speed, and what `auto` makes of each."""
    if not sizing.installed:
        return []
    lines = [
        "",
        "Installed models, predicted (and measured: median of recent answers) speed:",
        f"  {'llm.model':34} {'params':>7} {'fits':>4} {'TTFT':>7} {'prefill/s':>10} "
        f"{'tok/s':>6}   {'measured TTFT':>13} {'prefill/s':>9} {'tok/s':>6}",
    ]
    for model, p in sizing.installed:
        measured = measured_for(sizing.measured or {}, p.model)
        seen = (
            f"{measured['ttft_s']:12.1f}s {measured['prefill_tokens_per_s']:9.0f} "
            f"{measured['tokens_per_s']:6.1f}"
            if measured
            else f"{'-':>13} {'-':>9} {'-':>6}"
        )
        lines.append(
            f"  {model[:34]:34} {p.text_params / 1e9:6.2f}B {'yes' if p.fits else 'no':>4} "
            f"{_num(p.ttft_s, '.1f', 's'):>7} {_num(p.prefill_tokens_per_s, '.0f'):>10} "
            f"{_num(p.typical_decode_tokens_per_s, '.1f'):>6}   {seen}"
        )
    auto = sizing.auto
    if auto is not None:
        lines.append(f'llm.model = "auto" takes {auto.model or "nothing"}: {auto.reason}')
        lines += [f"  not {model}: {why}" for model, why in auto.rejected.items()]
    return lines


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _describe(p: Plan) -> str:
    if not p.fits:
        return f"{p.model}: does not fit: {p.reason}"
    speed = (
        f", ~{p.decode_tokens_per_s:.{0 if p.decode_tokens_per_s >= 10 else 1}f} tokens/s"
        if p.decode_tokens_per_s
        else " (no speed estimate: bandwidth unknown or CPU backend)"
    )
    if p.ttft_s is not None:
        speed += f", first token ~{p.ttft_s:.1f} s for {p.prompt_tokens:,} prompt tokens"
    kv = "unquantized" if p.kv_bits is None else f"{p.kv_bits}-bit"
    return (
        f"{p.model}: weights {format_bytes(p.weights_bytes)}, KV cache "
        f"{format_bytes(p.kv_bytes_per_token)}/token ({kv}), max context "
        f"{p.max_context_tokens:,} tokens; {p.max_concurrent_sequences} requests of "
        f"{p.context_tokens:,} tokens fit at once{speed}"
    )

"""llm.model = "auto": the largest installed model that fits and answers fast enough.

A model fits when the memory planner says so; it is fast enough when its predicted time to
first token for a typical RAG prompt (llm.typical_prompt_tokens) is within llm.target_ttft_s
and its predicted decode rate at least llm.target_tokens_per_s. When no model that fits is
that fast, the fastest one that fits is taken, and the choice says so. `choose_model_spec`
is the pure rule (table-driven tests); `resolve_model` applies it to this machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rag.config import Settings, replace
from rag.errors import InsufficientMemoryError, RagError
from rag.llm.probe import speed_for
from rag.models.catalog import cached_hub_ids, read_model_spec
from rag.models.hardware import Hardware, resolve_hardware
from rag.models.packaged import installed_models
from rag.models.planner import Plan, plan_served
from rag.models.spec import ModelSpec, embedder_weights_bytes
from rag.models.speed import MachineSpeed

AUTO = "auto"


@dataclass(frozen=True)
class Choice:
    """What `auto` took and why, and why not each of the others."""

    model: str | None  # the llm.model value chosen; None when no model fits
    plan: Plan | None
    met_targets: bool
    reason: str
    # llm.model value -> why it was not chosen ("" for the chosen one).
    rejected: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "name": self.plan.model if self.plan else None,
            "met_targets": self.met_targets,
            "reason": self.reason,
            "rejected": self.rejected,
        }


def too_slow(p: Plan, target_ttft_s: float, target_tokens_per_s: float) -> str:
    """Why `p` misses the targets, with the numbers; "" when it meets them or has no
    prediction (an unknown speed never rules a model out)."""
    misses = []
    if p.ttft_s is not None and p.ttft_s > target_ttft_s:
        misses.append(
            f"first token after {p.ttft_s:.1f} s for {p.prompt_tokens:,} prompt tokens "
            f"(target {target_ttft_s:g} s)"
        )
    decode = p.typical_decode_tokens_per_s
    if decode is not None and decode < target_tokens_per_s:
        misses.append(f"{decode:.1f} tokens/s (target {target_tokens_per_s:g})")
    return "; ".join(misses)


def answer_s(p: Plan, answer_tokens: int) -> float:
    """Predicted seconds for a typical answer: the first token, then the rest."""
    first = p.ttft_s or 0.0
    decode = p.typical_decode_tokens_per_s
    return first + (answer_tokens / decode if decode else 0.0)


def choose_model_spec(
    planned: Sequence[tuple[str, Plan]],
    target_ttft_s: float,
    target_tokens_per_s: float,
    answer_tokens: int = 160,
) -> Choice:
    """The largest fitting model that meets the targets, else the fastest fitting one.

    `planned` pairs each candidate's llm.model value with its plan (speed included).
    """
    fitting = [(model, p) for model, p in planned if p.fits]
    rejected = {model: f"does not fit: {p.reason}" for model, p in planned if not p.fits}
    if not fitting:
        return Choice(None, None, False, "no installed model fits this machine", rejected)
    slow = {model: too_slow(p, target_ttft_s, target_tokens_per_s) for model, p in fitting}
    fast = [(model, p) for model, p in fitting if not slow[model]]
    if fast:
        model, chosen = max(
            fast, key=lambda item: (item[1].text_params, item[1].max_context_tokens)
        )
        reason = "the largest installed model that fits and meets the speed targets"
        if chosen.ttft_s is None or chosen.typical_decode_tokens_per_s is None:
            reason += " (its speed is not predicted here: only memory was checked)"
        met = True
    else:
        model, chosen = min(fitting, key=lambda item: answer_s(item[1], answer_tokens))
        reason = (
            f"no model that fits meets the speed targets (first token within {target_ttft_s:g}"
            f" s, {target_tokens_per_s:g} tokens/s); this is the fastest that fits: "
            f"{slow[model]}"
        )
        met = False
    for other in slow:
        if other == model:
            continue
        if slow[other]:
            rejected[other] = f"too slow: {slow[other]}"
        else:
            rejected[other] = f"no larger than {chosen.model}, which also meets the targets"
    return Choice(model, chosen, met, reason, rejected)


def plan_candidates(
    hardware: Hardware,
    candidates: Iterable[tuple[str, ModelSpec]],
    settings: Settings,
    embedder_bytes: int,
    speed: MachineSpeed | None,
) -> list[tuple[str, Plan]]:
    """Each candidate planned the way it would be served."""
    return [
        (model, plan_served(hardware, spec, settings, embedder_bytes, speed))
        for model, spec in candidates
    ]


def installed_candidates() -> list[tuple[str, ModelSpec]]:
    """Models usable here without a download, as (llm.model value, spec)."""

    found = []
    packaged = [m.name for m in installed_models()]
    for model in [*packaged, *sorted(cached_hub_ids())]:
        try:
            found.append((model, read_model_spec(model)))
        except RagError:
            continue  # a broken cache entry is not a candidate
    return found


def resolve_model(settings: Settings, hardware: Hardware | None = None) -> str:
    """llm.model as a concrete value: itself, or what `auto` chooses on this machine."""
    if settings.llm.model != AUTO:
        return settings.llm.model
    choice = choose_here(settings, hardware)
    if choice.model is None:
        reasons = "; ".join(f"{m}: {why}" for m, why in choice.rejected.items())
        raise InsufficientMemoryError(f'llm.model = "auto": {choice.reason} ({reasons})')
    return choice.model


def choose_here(
    settings: Settings, hardware: Hardware | None = None, speed: MachineSpeed | None = None
) -> Choice:
    """`auto`'s choice among the installed models on this (or the given) machine."""

    hardware = hardware or resolve_hardware(settings.hardware)
    if speed is None:
        try:
            speed = speed_for(settings, hardware)
        except RagError:
            speed = None  # no probe possible: choose by memory alone
    planned = plan_candidates(
        hardware,
        installed_candidates(),
        settings,
        embedder_weights_bytes(settings.embedding),
        speed,
    )
    return choose_model_spec(
        planned,
        settings.llm.target_ttft_s,
        settings.llm.target_tokens_per_s,
        settings.llm.answer_tokens,
    )


def with_model(settings: Settings, model: str) -> Settings:
    """`settings` with llm.model set to a concrete value."""
    return replace(settings, "llm", model=model)

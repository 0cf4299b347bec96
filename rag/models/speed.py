"""How fast this machine runs a model, per engine: the record the planner predicts with.

The planner predicts time to first token from FLOPs and decode speed from bytes read, so it
needs two figures of the machine as an engine sees it: prefill FLOP/s and decode bytes/s.
They are measured on this machine by a probe of a few seconds (rag.llm.probe) and kept under
hardware.speed_cache_dir with the hardware identity they were taken on (CPU, cores, memory,
backend, engine, library version, probe model); another identity is another file, so a
changed machine is measured again. A machine we are not on (`rag plan --chip`) is predicted
from the chip tables instead (`table_speed`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.models.hardware import Hardware, apple_chip, apple_gpu_flops_per_s

# Raise when the probe changes what it measures: older records are then measured again.
PROBE_VERSION = 1


@dataclass(frozen=True)
class MachineSpeed:
    """Effective speeds of one engine on one machine, as the planner's formulas use them."""

    engine: str  # "llamacpp" or "mlx"
    backend: str  # "cpu", "metal" or "cuda"
    prefill_flops_per_s: float
    # None: decode is predicted from the chip's bandwidth instead (Metal).
    decode_bytes_per_s: float | None
    source: str  # "measured <date>", "Apple M4 table", ...
    # Per layer and token work that does not grow with the weights, in FLOPs / bytes at the
    # rates above (LLAMACPP_PREFILL_LAYER_FLOPS); 0 where the probe times bare kernels.
    prefill_layer_flops: float = 0.0
    decode_layer_bytes: float = 0.0
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    probe: dict[str, Any] = dataclasses.field(default_factory=dict)  # the raw measurements

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineSpeed:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def hardware_identity(
    chip: str,
    total_memory_bytes: int,
    backend: str,
    engine: str,
    threads: int = 0,
    probe_model: str = "",
) -> dict:
    """What a measurement holds for: another value of any of these means measuring again.

    `threads`: the engine's threads (llm.cpu_threads); 0, every usable core. `probe_model`:
    the model the probe runs, where it runs an installed one (llama.cpp).
    """
    cores = usable_cores()
    return {
        "chip": chip,
        "cores": cores,
        "threads": threads or cores,
        "memory_bytes": total_memory_bytes,
        "backend": backend,
        "engine": engine,
        "library": library_version(engine),
        "machine": platform.machine(),
        "probe_version": PROBE_VERSION,
        "probe_model": probe_model,
    }


def cache_path(directory: Path, identity: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"machine-speed-{identity['engine']}-{digest}.json"


def cached_speed(directory: Path, identity: dict[str, Any]) -> MachineSpeed | None:
    """The speed measured before on this very identity, if any."""
    path = cache_path(directory, identity)
    try:
        data = json.loads(path.read_text())
        speed = MachineSpeed.from_json(data)
    except (OSError, ValueError, TypeError):
        return None  # never measured, or a file cut short: measure again
    return speed if speed.identity == identity else None


def store_speed(directory: Path, speed: MachineSpeed) -> Path:
    path = cache_path(directory, speed.identity)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(speed.to_json(), indent=1))
        partial.replace(path)  # readers never see half a record
    except OSError:
        pass  # an unwritable cache costs a probe per start, not the start itself
    return path


# Share of an Apple GPU's peak FP32 FLOP/s that 4-bit prefill reaches: llama.cpp's Metal
# 7B Q4_0 prompt figures (discussion #4167) are 59-68% of it from M1 to M4.
APPLE_PREFILL_EFFICIENCY = 0.6


def table_speed(hardware: Hardware) -> MachineSpeed | None:
    """The speed of a machine we are not on, from the chip tables (Apple Silicon only)."""
    flops = apple_gpu_flops_per_s(hardware.chip) if hardware.backend == "metal" else None
    if flops is None:
        return None
    return MachineSpeed(
        engine="mlx",
        backend="metal",
        prefill_flops_per_s=flops * APPLE_PREFILL_EFFICIENCY,
        decode_bytes_per_s=None,
        source=f"{apple_chip(hardware.chip)} GPU table",
    )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def library_version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    package = {"llamacpp": "llama-cpp-python", "mlx": "mlx"}.get(engine, engine)
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"

"""The machine: backend, chip, memory, the GPU's working-set budget and memory bandwidth.

`detect_hardware` reads this machine through MLX and the OS; `simulate_hardware` builds the
same record for a machine we are not on (`rag plan --memory-gb 16 --chip M4`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.config import HardwareSettings
from rag.errors import UsageError

GIB = 1024**3
GB = 1000**3

# Apple's published unified-memory bandwidth in GB/s (Apple's chip and Mac spec pages; the
# M5 Pro and M5 Max figures from their launch coverage). Vendors quote decimal GB/s.
_APPLE_BANDWIDTH_GB_S = {
    "M1": 68.25,
    "M1 Pro": 200.0,
    "M1 Max": 400.0,
    "M1 Ultra": 800.0,
    "M2": 100.0,
    "M2 Pro": 200.0,
    "M2 Max": 400.0,
    "M2 Ultra": 800.0,
    "M3": 100.0,
    "M3 Pro": 150.0,
    "M3 Max": 400.0,
    "M3 Ultra": 819.0,
    "M4": 120.0,
    "M4 Pro": 273.0,
    "M4 Max": 546.0,
    "M5": 153.0,
    "M5 Pro": 307.0,
    "M5 Max": 614.0,
}
# Chips sold in two bins with different buses: the cut-down bin's bandwidth and the memory
# sizes (GB) it alone ships with. M3 Max 14-core/30-core GPU: 36 or 96 GB at 300 GB/s;
# M4 Max 14-core/32-core GPU: 36 GB at 410 GB/s. Any other size, or a size both bins share,
# gets the full bin's (higher-memory) figure above. The M5 Max's cut-down bin is not in our
# sources, so every M5 Max is planned at 614 GB/s.
_APPLE_LOWER_BINS = {
    "M3 Max": (300.0, (36, 96)),
    "M4 Max": (410.0, (36,)),
}
# GPU FP32 throughput in TFLOPS of each chip's largest GPU: Apple's figures for M1 and M2,
# cores x 128 ALUs x 2 x clock for M3 and M4 (Apple publishes none). M5's GPU adds matmul
# units MLX uses for prefill, with no figure yet: an M5 Mac is planned from its own probe.
_APPLE_GPU_TFLOPS = {
    "M1": 2.6,
    "M1 Pro": 5.2,
    "M1 Max": 10.4,
    "M1 Ultra": 20.8,
    "M2": 3.6,
    "M2 Pro": 6.8,
    "M2 Max": 13.6,
    "M2 Ultra": 27.2,
    "M3": 4.1,
    "M3 Pro": 7.4,
    "M3 Max": 16.4,
    "M3 Ultra": 28.2,
    "M4": 4.3,
    "M4 Pro": 9.2,
    "M4 Max": 18.4,
}
_APPLE_CHIP = re.compile(r"\b(M[1-9])(?:\s*(Pro|Max|Ultra))?\b", re.IGNORECASE)


@dataclass(frozen=True)
class Hardware:
    """What the memory planner needs to know about a machine."""

    backend: str  # "metal", "cuda" or "cpu": where MLX runs the model
    chip: str
    total_memory_bytes: int
    # What the accelerator may hold: Metal's recommended working set, free CUDA memory, or
    # physical RAM for the CPU backend.
    gpu_budget_bytes: int
    memory_bandwidth_bytes_per_s: float | None
    # hardware.memory_limit_gb, when the operator caps what rag may use (0: no cap).
    memory_limit_bytes: int = 0
    simulated: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def detect_hardware() -> Hardware:
    """This machine, as MLX sees it."""
    import mlx.core as mx

    info = mx.device_info()
    chip = _chip_name()
    if "max_recommended_working_set_size" in info:
        total = int(info.get("memory_size") or _physical_memory_bytes())
        return Hardware(
            backend="metal",
            chip=chip,
            total_memory_bytes=total,
            gpu_budget_bytes=int(info["max_recommended_working_set_size"]),
            memory_bandwidth_bytes_per_s=apple_bandwidth_bytes_per_s(chip, total),
        )
    if "total_memory" in info:
        total = int(info["total_memory"])
        # Free rather than total memory: other processes may hold part of the card.
        return Hardware(
            backend="cuda",
            chip=str(info.get("device_name") or chip),
            total_memory_bytes=total,
            gpu_budget_bytes=int(info.get("free_memory") or total),
            memory_bandwidth_bytes_per_s=None,
        )
    total = _physical_memory_bytes()
    return Hardware("cpu", chip, total, total, None)


def simulate_hardware(memory_gb: float, chip: str) -> Hardware:
    """A machine with `memory_gb` of memory (GB as sold: 16 GB = 16 GiB) and this chip.

    An Apple chip (M1 … M5, Pro/Max/Ultra) is planned on Metal with macOS's default working
    set; any other name is planned as an MLX CPU machine.
    """
    if memory_gb <= 0:
        raise UsageError(f"--memory-gb {memory_gb}: must be above 0")
    total = int(memory_gb * GIB)
    apple = apple_chip(chip)
    if apple is None:
        return Hardware("cpu", chip, total, total, None, simulated=True)
    return Hardware(
        backend="metal",
        chip=f"Apple {apple}",
        total_memory_bytes=total,
        gpu_budget_bytes=metal_working_set_bytes(total),
        memory_bandwidth_bytes_per_s=apple_bandwidth_bytes_per_s(apple, total),
        simulated=True,
    )


def resolve_hardware(
    settings: HardwareSettings, memory_gb: float | None = None, chip: str | None = None
) -> Hardware:
    """This machine with the operator's [hardware] overrides, or a simulated one.

    A simulated machine takes what the flags leave out (memory or chip) from this one; the
    overrides describe this machine, so they do not apply to a simulation.
    """
    if memory_gb is not None or chip is not None:
        if memory_gb is None or chip is None:
            here = detect_hardware()
            memory_gb = here.total_memory_bytes / GIB if memory_gb is None else memory_gb
            chip = here.chip if chip is None else chip
        return simulate_hardware(memory_gb, chip)
    hardware = detect_hardware()
    if settings.memory_bandwidth_gb_s > 0:
        hardware = dataclasses.replace(
            hardware, memory_bandwidth_bytes_per_s=settings.memory_bandwidth_gb_s * GB
        )
    if settings.memory_limit_gb > 0:
        hardware = dataclasses.replace(
            hardware, memory_limit_bytes=int(settings.memory_limit_gb * GIB)
        )
    return hardware


def metal_working_set_bytes(total_memory_bytes: int) -> int:
    """macOS's default GPU working set (recommendedMaxWorkingSetSize) for this much RAM.

    Values logged by llama.cpp users on macOS 13-15 follow one rule: 2/3 of RAM up to 32 GiB
    (10922.67 MiB on 16 GiB, 21845.34 MiB on 32 GiB), 3/4 from 36 GiB up (27 GiB on 36 GiB,
    48 GiB on 64 GiB, 144 GiB on 192 GiB). macOS 26 reports more on large machines (107.5
    GiB of 128 GiB), so a real Mac's own figure is always used; simulation keeps the older,
    smaller rule, which errs on the side of fitting.
    """
    if total_memory_bytes <= 32 * GIB:
        return total_memory_bytes * 2 // 3
    return total_memory_bytes * 3 // 4


def apple_chip(name: str) -> str | None:
    """The Apple Silicon family and tier in a chip name ("Apple M2 Pro" -> "M2 Pro")."""
    found = _APPLE_CHIP.search(name)
    if found is None:
        return None
    family = found.group(1).upper()
    tier = found.group(2)
    return f"{family} {tier.capitalize()}" if tier else family


def apple_bandwidth_bytes_per_s(chip: str, total_memory_bytes: int) -> float | None:
    """Memory bandwidth of an Apple chip in bytes/s, or None for an unknown chip."""
    name = apple_chip(chip)
    if name is None or name not in _APPLE_BANDWIDTH_GB_S:
        return None
    gb_s = _APPLE_BANDWIDTH_GB_S[name]
    if name in _APPLE_LOWER_BINS:
        lower_gb_s, lower_sizes_gb = _APPLE_LOWER_BINS[name]
        if round(total_memory_bytes / GIB) in lower_sizes_gb:
            gb_s = lower_gb_s
    return gb_s * GB


def apple_gpu_flops_per_s(chip: str) -> float | None:
    """Peak FP32 FLOP/s of an Apple chip's GPU, or None for an unknown chip."""
    name = apple_chip(chip)
    tflops = _APPLE_GPU_TFLOPS.get(name) if name else None
    return tflops * 1e12 if tflops else None


def _chip_name() -> str:
    if platform.system() == "Darwin" and (brand := sysctl("machdep.cpu.brand_string")):
        return brand
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        # macOS Pythons without SC_PHYS_PAGES: ask the kernel directly.
        return int(sysctl("hw.memsize") or 0)


def read_memory_bytes() -> tuple[int, int, int]:
    """(total, available, swap in use) in bytes, from /proc/meminfo or macOS's sysctl."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            kib[key] = int(rest.split()[0]) if rest.split() else 0
        swap = kib.get("SwapTotal", 0) - kib.get("SwapFree", 0)
        return kib["MemTotal"] * 1024, kib.get("MemAvailable", 0) * 1024, swap * 1024
    total = int(sysctl("hw.memsize") or 0)
    # kern.memorystatus_level is the percentage of memory macOS considers free.
    level = int(sysctl("kern.memorystatus_level") or 0)
    return total, total * level // 100, _macos_swap_used_bytes()


def sysctl(key: str) -> str:
    """A macOS kernel value (`sysctl -n KEY`), or "" where there is none."""
    try:
        done = subprocess.run(
            ["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _macos_swap_used_bytes() -> int:
    # "total = 2048.00M  used = 1024.25M  free = 1023.75M  (encrypted)"
    fields = sysctl("vm.swapusage").split()
    if "used" not in fields:
        return 0
    value = fields[fields.index("used") + 2]
    scale = {"K": 1024, "M": 1024**2, "G": GIB}.get(value[-1:], 1)
    try:
        return int(float(value.rstrip("KMG")) * scale)
    except ValueError:
        return 0


def format_bytes(count: float) -> str:
    if abs(count) >= GIB:
        return f"{count / GIB:.2f} GiB"
    if abs(count) >= 1024**2:
        return f"{count / 1024**2:.0f} MiB"
    return f"{count / 1024:.0f} KiB"

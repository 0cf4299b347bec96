"""Which engine generates here (llm.engine), why, and loading it.

llm.engine = "auto" (the default) picks:
- MLX where it has a GPU: Metal on Apple Silicon, CUDA when MLX's CUDA backend is installed
  and sees a device;
- else llama.cpp in this process (llama-cpp-python), for a GGUF llm.model;
- MLX's CPU backend only when llama-cpp-python is not installed (`rag doctor` warns: it is
  about 10x slower) or llm.model is an MLX model, which llama.cpp cannot read.
"mlx", "llamacpp" and "openai" choose one outright.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import LlmSettings
from rag.llm.llamacpp import load_llamacpp_engine
from rag.llm.mlx import load_mlx_engine, mlx_backend
from rag.llm.remote import load_remote_engine
from rag.models.packaged import packaged_model

if TYPE_CHECKING:
    from rag.llm.base import Engine

# Measured on a 2-core x86 Linux VM, same GGUF file, same prompt (see rag.llm.llamacpp).
CPU_SPEED_GAP = (
    "on a 2-core x86 CPU llama.cpp runs SmolLM2-135M Q4_1 at ~290 prompt and 100-127 answer "
    "tokens/s, MLX's CPU backend at ~24 and ~11 (about 10x slower)"
)
INSTALL_LLAMA_CPP = (
    '`make install` builds llama-cpp-python; by hand: CMAKE_ARGS="-DGGML_NATIVE=OFF '
    '-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python'
)


@dataclass(frozen=True)
class EngineChoice:
    kind: str  # "mlx", "llamacpp" or "openai"
    backend: str  # "metal", "cuda", "cpu", or the server's URL
    reason: str
    # MLX on a CPU where llama.cpp would run the model about 10x faster.
    slow: bool = False

    @property
    def local(self) -> bool:
        """Whether the model runs in this process (and its memory is planned here)."""
        return self.kind != "openai"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def choose_engine(settings: LlmSettings) -> EngineChoice:
    """The engine llm.engine resolves to on this machine, and why."""
    if settings.engine == "openai":
        return EngineChoice("openai", settings.base_url, 'llm.engine = "openai"')
    if settings.engine == "llamacpp":
        return EngineChoice("llamacpp", "cpu", 'llm.engine = "llamacpp"')

    gpu = mlx_backend()
    if settings.engine == "mlx":
        slow = gpu in ("cpu", "") and _gguf(settings.model)
        return EngineChoice("mlx", gpu or "cpu", 'llm.engine = "mlx"', slow=slow)
    if gpu in ("metal", "cuda"):
        return EngineChoice("mlx", gpu, f"auto: MLX has a GPU here ({gpu.capitalize()})")
    if not _gguf(settings.model):
        return EngineChoice(
            "mlx", "cpu", "auto: no GPU, and llm.model is an MLX model, which llama.cpp cannot read"
        )
    if llama_cpp_installed():
        return EngineChoice("llamacpp", "cpu", "auto: no GPU for MLX; llama.cpp is faster on CPU")
    return EngineChoice(
        "mlx",
        "cpu",
        "auto: no GPU, and llama-cpp-python is not installed, so MLX's CPU backend",
        slow=True,
    )


def load_engine(
    settings: LlmSettings,
    *,
    context_tokens: int | None = None,
    choice: EngineChoice | None = None,
    tune: bool = True,
) -> Engine:
    """Load the engine llm.engine resolves to (`choice`, when already made).

    `context_tokens`: the planned context (llama.cpp allocates its KV cache for it; 0 or
    None: llm.context_tokens). `tune=False` skips MLX's CPU tuning (rag.llm.cputune).
    """
    choice = choice or choose_engine(settings)
    if choice.kind == "openai":
        return load_remote_engine(settings)
    if choice.kind == "llamacpp":
        return load_llamacpp_engine(settings, context_tokens=context_tokens, reason=choice.reason)

    return load_mlx_engine(settings, tune=tune, reason=choice.reason)


def _gguf(model: str) -> bool:

    # Every packaged model is a GGUF ("auto" picks among them, and cached hub ids only where
    # MLX has a GPU); asking for a packaged model's path would join its parts.
    if model == "auto" or packaged_model(model) is not None:
        return True
    return Path(model).expanduser().suffix == ".gguf"

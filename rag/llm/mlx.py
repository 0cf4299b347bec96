"""The MLX engine: a 4-bit model run by MLX, streaming tokens from a chat prompt.

The engine where MLX has a GPU (Metal on Apple Silicon, CUDA with MLX's CUDA backend), and
with llm.engine = "mlx" anywhere (rag.llm.load). `MlxEngine.stream` runs one request in
the caller's thread; once `start_batching` is called (the web service does), every request
goes through one generation thread instead, which batches concurrent requests with mlx-lm's
BatchGenerator (rag.llm.batching). Either way (rag.llm.local does the common part):

- The planned context is enforced here: mlx-lm ignores `max_kv_size` for Llama-family
  models, so a prompt that cannot fit is refused with the numbers before any memory is
  spent, and generation stops at `max_tokens`, so the KV cache never outgrows
  prompt + max_tokens <= context.
- The KV cache of the fixed chat prefix (the template up to the first user turn: the system
  prompt) is computed once and reused by every request that starts with it.
- Stop strings cut the answer; the string itself is not part of it.
- `should_stop` cancels mid-stream: between prefill chunks and between tokens. A cancelled
  request's KV cache is freed at once (dropped from the batch, or its generator closed).
- Each request reports TTFT, prefill and decode tokens/s and its peak memory
  (mx.get_peak_memory).

MLX and the tokenizer are kept on separate threads when batching: the generation thread only
runs the model on token ids; detokenizing and stop strings happen in the caller's thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import LlmSettings
from rag.errors import ModelLoadError
from rag.llm.base import Cancelled, Stopped, Token, TokenEvent, end_of_turn_token
from rag.llm.cputune import tune_model
from rag.llm.gguf import load_gguf
from rag.llm.kvcache import clone_cache, snapshot_cache
from rag.llm.local import LocalEngine, ThreadTokens
from rag.models.packaged import model_name, model_path
from rag.models.planner import PREFILL_STEP_TOKENS

if TYPE_CHECKING:
    from mlx_lm.tokenizer_utils import TokenizerWrapper

# mlx-lm's KV quantization group size (the planner assumes the same).
KV_GROUP_SIZE = 64


class MlxEngine(LocalEngine):
    kind = "mlx"

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: TokenizerWrapper,
        max_context_tokens: int,
        *,
        kv_bits: int | None = None,
        stop: Sequence[str] = (),
        reason: str = "",
    ):
        super().__init__(name, tokenizer, max_context_tokens, stop=stop, reason=reason)
        self.model = model
        # None keeps the KV cache in the activation dtype; 4 or 8 packs it (QuantizedKVCache)
        # from the first token, so the planner's KV bytes hold for every context length.
        self.kv_bits = kv_bits
        # Prefill chunk: the planner's, so its prediction of the prefill memory holds.
        self.prefill_step_tokens = PREFILL_STEP_TOKENS
        self.backend = mlx_backend()
        # mlx-lm stops only on the model's EOS ids, which are often the document end
        # (<|endoftext|>) rather than the token that closes an assistant turn.
        end_of_turn = end_of_turn_token(tokenizer._tokenizer)
        if end_of_turn is not None:
            tokenizer.add_eos_token(end_of_turn)

    def local_tokens(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        should_stop: Callable[[], bool],
    ) -> LocalTokens:
        return LocalTokens(self, prompt_ids, max_tokens, temperature, should_stop)

    def detokenizer(self) -> Any:
        return self.tokenizer.detokenizer  # a fresh one per call

    def can_batch(self) -> bool:
        """mlx-lm batches unless the KV cache is quantized or its layers cannot merge."""
        if self.kv_bits is not None:
            return False  # see rag.llm.batching's docstring
        from mlx_lm.models.cache import make_prompt_cache

        return all(hasattr(c, "merge") for c in make_prompt_cache(self.model))

    def score(self, prompt_ids: list[int], token_ids: Sequence[int]) -> list[float]:
        """The logits of `token_ids` as the next token after the prompt (one prefill)."""
        import mlx.core as mx

        def run() -> list[float]:
            logits = self.model(mx.array([prompt_ids]))[0, -1]
            return [float(logits[t]) for t in token_ids]

        # Where MLX runs: in `rag serve` the generation thread, never beside it.
        return self.call(run)

    # -- the prefix cache ---------------------------------------------------------------

    def prompt_cache(self, prompt_ids: Sequence[int]) -> tuple[list[Any], int]:
        """A fresh KV cache for `prompt_ids`, prefilled with its cached prefix, if any.

        Returns (cache, tokens it already holds). The first prompt with a registered prefix
        pays for the prefix's prefill here, once. MLX work: call it where MLX runs.
        """
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        prefix = self.prefixes.match(prompt_ids)
        if prefix is None:
            return make_prompt_cache(self.model), 0
        stored = self.prefixes.get(prefix)
        if stored is None:
            cache = make_prompt_cache(self.model)
            for i in range(0, len(prefix), self.prefill_step_tokens):
                chunk = mx.array(prefix[i : i + self.prefill_step_tokens])
                self.model(chunk[None], cache=cache)
                mx.eval([c.state for c in cache])
            stored = snapshot_cache(cache)
            self.prefixes.put(prefix, stored)
        return clone_cache(stored), len(prefix)


def mlx_backend() -> str:
    """Where MLX computes here: "metal", "cuda" or "cpu" ("" when mlx does not import)."""
    try:
        import mlx.core as mx
    except ImportError:
        return ""
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "cpu"


class LocalTokens(ThreadTokens):
    """A request's tokens generated in this thread by mlx-lm's generate_step."""

    engine: MlxEngine

    def _generate(
        self, prompt_ids: list[int], max_tokens: int, temperature: float
    ) -> Generator[TokenEvent, None, None]:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, generation_stream, wired_limit
        from mlx_lm.sample_utils import make_sampler

        engine = self.engine
        eos = engine.tokenizer.eos_token_ids

        def progress(_done: int, _total: int) -> None:
            if self._should_stop():
                raise Cancelled

        mx.reset_peak_memory()
        with wired_limit(engine.model, [generation_stream]):  # type: ignore[list-item]  # a Stream at run time
            cache, self.cached_tokens = engine.prompt_cache(prompt_ids)
            steps = generate_step(
                mx.array(prompt_ids[self.cached_tokens :]),
                engine.model,
                max_tokens=max_tokens,
                sampler=make_sampler(temp=temperature),
                prompt_cache=cache,
                prefill_step_size=engine.prefill_step_tokens,
                kv_bits=engine.kv_bits,
                kv_group_size=KV_GROUP_SIZE,
                quantized_kv_start=0,
                prompt_progress_callback=progress,
            )
            try:
                for n, (token, _logprobs) in enumerate(steps, start=1):
                    reason = "stop" if token in eos else "length" if n == max_tokens else None
                    if reason is not None:
                        self.peak_memory_bytes = mx.get_peak_memory()
                    yield Token(int(token), reason)
                    if reason is not None:
                        return
            except Cancelled:
                yield Stopped()
            finally:
                steps.close()
                del cache
                self.peak_memory_bytes = max(self.peak_memory_bytes, mx.get_peak_memory())


def load_mlx_engine(settings: LlmSettings, *, tune: bool = True, reason: str = "") -> MlxEngine:
    """llm.model on MLX: the bundled GGUF, a .gguf file, an MLX dir or a cached hub id.

    `tune=False` skips the backend tuning (rag.llm.cputune), for measuring what it gains.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = settings.model
    path = model_path(spec, settings.cache_path)
    options: dict[str, Any] = {
        "kv_bits": settings.kv_bits or None,
        "stop": settings.stop,
        "reason": reason,
    }
    if path.suffix == ".gguf":
        model, tokenizer, config = load_gguf(path, tune=tune, cpu_threads=settings.cpu_threads)
        max_context = int(config["max_position_embeddings"])
        return MlxEngine(model_name(spec), model, tokenizer, max_context, **options)
    model, tokenizer, max_context = _load_mlx(spec, path, tune, settings.cpu_threads)
    return MlxEngine(model_name(spec), model, tokenizer, max_context, **options)


def _load_mlx(
    spec: str, path: Path, tune: bool, cpu_threads: int
) -> tuple[Any, TokenizerWrapper, int]:
    import mlx_lm

    try:
        model, tokenizer, config = mlx_lm.load(  # type: ignore[misc]  # 3 with return_config
            str(path) if path.exists() else spec, return_config=True
        )
    except Exception as e:  # mlx-lm raises hub, file and shape errors of many types
        raise ModelLoadError(
            f"cannot load llm.model = {spec!r}: {e}. Give an MLX model directory, a .gguf file, "
            "or a hub id that is already in the local Hugging Face cache"
        ) from e
    if tune:
        tune_model(model, cpu_threads or None)
    max_context = int(config.get("max_position_embeddings") or config.get("max_seq_len") or 4096)
    return model, tokenizer, max_context

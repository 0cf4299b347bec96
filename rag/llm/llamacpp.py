"""The llama.cpp engine: a GGUF model run in this process by llama-cpp-python.

The engine for CPU-only machines (rag.llm.load): on a 2-core x86 box MLX's CPU backend
is about 10x slower than llama.cpp on the same file (SmolLM2-135M Q4_1: prefill ~290 vs
~24 tokens/s, decode 100-127 vs ~11). llama.cpp reads the file itself, so any GGUF it can
load runs (llama, qwen2, ...). It keeps every promise MlxEngine makes:

- Packing: prompts are rendered and tokenized with the GGUF's own tokenizer and chat
  template, as transformers builds them from the file (the same as the other engines), and
  llama.cpp evaluates exactly those ids: `Llama.eval` takes ids and tokenizes nothing.
- The context: n_ctx is the planned context, and a request that cannot fit is refused with
  the numbers (check_request) before any work.
- Cancellation: the prompt is evaluated in chunks sized to take about PREFILL_CHUNK_S each,
  with `should_stop` between them, so a cancel, a deadline or a shutdown lands within one
  chunk even mid-prefill of a long prompt; and between tokens.
- Prefix reuse: llama.cpp keeps the KV of the tokens it evaluated last, and a request keeps
  the part its prompt shares with them (the system prompt; more for a follow-up). The KV of
  each registered fixed prefix is also saved (llama_state_seq_get_data), and restored when
  requests with another system prompt ran in between.
- Sampling: greedy (argmax) at temperature 0, else softmax(logits / T), as mlx-lm samples.
- One request at a time: a Llama object is one sequence in one context and is not
  thread-safe. Under `rag serve` the generation thread (rag.llm.batching) is the only thread
  that touches it, and requests queue for it (concurrency 1).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from rag.config import LlmSettings
from rag.errors import EngineError, ModelLoadError
from rag.llm.base import Cancelled, Stopped, TextStream, Token, TokenEvent, end_of_turn_token
from rag.llm.gguf import load_gguf_tokenizer
from rag.llm.local import LocalEngine, ThreadTokens
from rag.models.gguffile import read_gguf_header
from rag.models.packaged import model_name, model_path

# Tokens llama.cpp may take in one decode call (its n_batch and n_ubatch).
BATCH_TOKENS = 512
# A prefill chunk is sized to take about this long, so `should_stop` is seen this often.
PREFILL_CHUNK_S = 0.5
# The first chunk, before the prefill rate is known; no chunk is smaller than the floor,
# under which llama.cpp's matmuls lose speed (Qwen2.5-1.5B on 2 cores: 67 tok/s in chunks of
# 32, 75 in chunks of 128 or more), so a slow model sees `should_stop` every 1-2 s.
FIRST_CHUNK_TOKENS = 128
MIN_CHUNK_TOKENS = 128
# llama.cpp's ggml types for a quantized KV cache (llm.kv_bits).
_KV_TYPES = {8: 8, 4: 2}  # GGML_TYPE_Q8_0, GGML_TYPE_Q4_0


class LlamaCppEngine(LocalEngine):
    kind = "llamacpp"

    def __init__(
        self,
        name: str,
        llama: Any,
        tokenizer: Any,
        max_context_tokens: int,
        *,
        stop: Sequence[str] = (),
        reason: str = "",
        backend: str = "cpu",
    ):
        super().__init__(name, tokenizer, max_context_tokens, stop=stop, reason=reason)
        self.llama = llama
        self.backend = backend
        self.chunk_tokens = min(FIRST_CHUNK_TOKENS, llama.n_batch)
        eos = tokenizer.eos_token_id
        self.eos_token_ids = {eos} if isinstance(eos, int) else set(eos or ())
        # The token that closes an assistant turn, often not the model's EOS (see MlxEngine).
        end_of_turn = end_of_turn_token(tokenizer)
        if end_of_turn is not None:
            self.eos_token_ids.add(tokenizer.convert_tokens_to_ids(end_of_turn))

    def local_tokens(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        should_stop: Callable[[], bool],
    ) -> LlamaTokens:
        return LlamaTokens(self, prompt_ids, max_tokens, temperature, should_stop)

    def detokenizer(self) -> TextStream:
        return TextStream(self.tokenizer)

    def score(self, prompt_ids: list[int], token_ids: Sequence[int]) -> list[float]:
        """The logits of `token_ids` as the next token after the prompt (one prefill)."""

        def run() -> list[float]:
            self.prefill(prompt_ids, self.keep(prompt_ids), lambda: False)
            logits = self.logits()
            return [float(logits[t]) for t in token_ids]

        return self.call(run)

    # -- the model: only ever on one thread (the generation thread under `rag serve`) ----

    def keep(self, prompt_ids: Sequence[int]) -> int:
        """Keep the KV of the longest start of `prompt_ids` llama.cpp holds or has saved;
        returns its length.

        At least the last prompt token is always left to evaluate: its logits give the
        first answer token.
        """
        import llama_cpp
        import numpy as np

        llama = self.llama
        limit = min(llama.n_tokens, len(prompt_ids) - 1)
        differ = np.flatnonzero(llama.input_ids[:limit] != np.asarray(prompt_ids[:limit]))
        common = int(differ[0]) if differ.size else limit
        prefix = self.prefixes.match(prompt_ids)
        saved = self.prefixes.get(prefix) if prefix is not None else None
        if prefix is not None and saved is not None and len(prefix) > common:
            if self._restore_prefix(prefix, saved):
                return len(prefix)
            common = 0
        memory = llama_cpp.llama_get_memory(llama.ctx)
        # A model whose cache cannot drop a tail (recurrent, sliding-window) starts over.
        if common < llama.n_tokens and not llama_cpp.llama_memory_seq_rm(memory, 0, common, -1):
            common = 0
            self.reset()
        llama.n_tokens = common
        return common

    def prefill(
        self, prompt_ids: Sequence[int], kept: int, should_stop: Callable[[], bool]
    ) -> None:
        """Evaluate the prompt after its first `kept` tokens (`keep`'s), in chunks.

        Raises Cancelled between chunks when `should_stop` says so.
        """
        llama = self.llama
        prefix = self.prefixes.match(prompt_ids)
        save_at = 0
        if prefix is not None and kept < len(prefix) and self.prefixes.get(prefix) is None:
            save_at = len(prefix)  # a chunk ends there, and the prefix's KV is saved
        position = kept
        try:
            while position < len(prompt_ids):
                if should_stop():
                    raise Cancelled
                end = min(len(prompt_ids), position + self.chunk_tokens)
                if position < save_at < end:
                    end = save_at
                started = time.perf_counter()
                llama.eval(prompt_ids[position:end])
                self._size_chunks(end - position, time.perf_counter() - started)
                position = end
                if position == save_at and prefix is not None:
                    self._save_prefix(prefix)
        except RuntimeError as e:  # llama_decode failed: the KV state is unknown now
            self.reset()
            raise EngineError(f"llama.cpp failed to evaluate the prompt: {e}") from e

    def logits(self) -> Any:
        """The logits after the last evaluated token (a numpy view into llama.cpp's buffer)."""
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llama.n_vocab(),))

    def sample(self, temperature: float, rng: Any) -> int:
        import numpy as np

        logits = self.logits()
        if temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        return int(rng.choice(len(p), p=p / p.sum()))

    def append(self, token: int) -> None:
        """Evaluate one generated token (its KV joins the cache; its logits come next)."""
        try:
            self.llama.eval([token])
        except RuntimeError as e:
            self.reset()
            raise EngineError(f"llama.cpp failed to generate: {e}") from e

    def reset(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llama.ctx), True)
        self.llama.n_tokens = 0

    def _save_prefix(self, prefix: tuple[int, ...]) -> None:
        import llama_cpp

        ctx = self.llama.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        if written:
            self.prefixes.put(prefix, bytes(buffer)[:written])

    def _restore_prefix(self, prefix: tuple[int, ...], state: bytes) -> bool:
        import llama_cpp

        llama = self.llama
        self.reset()
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not llama_cpp.llama_state_seq_set_data(llama.ctx, buffer, len(state), 0):
            self.reset()
            return False
        llama.input_ids[: len(prefix)] = prefix
        llama.n_tokens = len(prefix)
        return True

    def _size_chunks(self, tokens: int, seconds: float) -> None:
        """The next chunk: what this machine evaluates in about PREFILL_CHUNK_S."""
        if tokens < MIN_CHUNK_TOKENS or seconds <= 0:
            return  # too short a sample to measure the rate by
        fit = int(tokens / seconds * PREFILL_CHUNK_S) // MIN_CHUNK_TOKENS * MIN_CHUNK_TOKENS
        self.chunk_tokens = max(MIN_CHUNK_TOKENS, min(self.llama.n_batch, fit))


class LlamaTokens(ThreadTokens):
    """A request's tokens generated in this thread by llama.cpp (a rag.llm.base.TokenSource).

    `peak_memory_bytes` is this process's resident set after the prefill and at the end:
    llama.cpp allocates its KV cache and compute buffers itself, outside any allocator that
    could report a per-request peak, so the process's RSS is the measure (it includes the
    embedder and everything else resident).
    """

    engine: LlamaCppEngine

    def _generate(
        self, prompt_ids: list[int], max_tokens: int, temperature: float
    ) -> Generator[TokenEvent, None, None]:
        import numpy as np

        engine = self.engine
        rng = np.random.default_rng()
        try:
            self.cached_tokens = engine.keep(prompt_ids)
            try:
                engine.prefill(prompt_ids, self.cached_tokens, self._should_stop)
            except Cancelled:
                yield Stopped()
                return
            self.peak_memory_bytes = rss_bytes()
            for n in range(1, max_tokens + 1):
                token = engine.sample(temperature, rng)
                stops = token in engine.eos_token_ids
                reason = "stop" if stops else "length" if n == max_tokens else None
                yield Token(token, reason)
                if reason is not None:
                    return
                if self._should_stop():
                    yield Stopped()
                    return
                engine.append(token)
        finally:
            self.peak_memory_bytes = max(self.peak_memory_bytes, rss_bytes())


def rss_bytes() -> int:
    """This process's resident memory now (Linux); elsewhere its high-water mark."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB here


def cpu_threads(configured: int) -> int:
    """llm.cpu_threads, or every core this process may use (0)."""
    if configured > 0:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def gguf_tokenizer(path: Path) -> tuple[Any, int]:
    """(the file's tokenizer with its chat template, the model's trained context).

    From the header alone, for any architecture llama.cpp runs (the tensors are its own
    business): the context is `<general.architecture>.context_length`.
    """

    metadata = read_gguf_header(path)[0]
    architecture = metadata.get("general.architecture", "llama")
    context = int(metadata.get(f"{architecture}.context_length") or 0)
    if context < 1:
        raise ModelLoadError(f"{path.name} does not say its context length")
    tokenizer = load_gguf_tokenizer(path, metadata.get("tokenizer.chat_template"))
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"{path.name} has no chat template to pack prompts with")
    return tokenizer, context


def load_llamacpp_engine(
    settings: LlmSettings, *, context_tokens: int | None = None, reason: str = ""
) -> LlamaCppEngine:
    """llm.model (a GGUF file) on llama.cpp, with an n_ctx of `context_tokens` (the plan's)."""

    path = model_path(settings.model, settings.cache_path)
    if path.suffix != ".gguf":
        raise ModelLoadError(
            f'llm.engine = "llamacpp" runs GGUF files, and llm.model = {settings.model!r} is '
            'not one: give a .gguf file, or set llm.engine = "mlx" for an MLX model'
        )
    # ggml's OpenMP threads spin while they wait for each other (libgomp spins 300,000 times
    # before it sleeps). Where other processes want the same cores that starves everyone;
    # never spinning costs 3x on an idle machine. Measured on 2 cores, 135M model, decode
    # tokens/s idle / on a busy machine (load 6-15): default spin 79-109 / 0.2-0.4; passive
    # 28-31 / 11-19; 1,000 spins 70-100 / 12-14. Read when llama_cpp loads libgomp; an
    # operator's own setting wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    try:
        import llama_cpp
    except (ImportError, OSError) as e:
        raise ModelLoadError(
            f"llama-cpp-python does not load ({e}): `make install` builds it, or set "
            'llm.engine = "mlx" (about 10x slower on a CPU)'
        ) from e
    tokenizer, model_context = gguf_tokenizer(path)
    n_ctx = min(context_tokens or settings.context_tokens, model_context)
    threads = cpu_threads(settings.cpu_threads)
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    options: dict[str, Any] = {}
    if settings.kv_bits:
        kv_type = _KV_TYPES[settings.kv_bits]
        # llama.cpp quantizes the V cache only with flash attention.
        options.update(type_k=kv_type, type_v=kv_type, flash_attn=True)
    try:
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=BATCH_TOKENS,
            n_ubatch=BATCH_TOKENS,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=-1 if offload else 0,
            logits_all=False,
            verbose=False,
            **options,
        )
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"llama.cpp cannot load {path}: {e}") from e
    backend = ("metal" if sys.platform == "darwin" else "gpu") if offload else "cpu"
    return LlamaCppEngine(
        model_name(settings.model),
        llama,
        tokenizer,
        n_ctx,
        stop=settings.stop,
        reason=reason,
        backend=backend,
    )

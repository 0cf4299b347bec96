"""The answer engine: a 4-bit model run by MLX, streaming tokens from a chat prompt.

`MlxEngine.stream` runs one request in the caller's thread; once `start_batching` is called
(the web service does), every request goes through one generation thread instead, which
batches concurrent requests with mlx-lm's BatchGenerator (rag.batching). Either way:

- The planned context is enforced here: mlx-lm ignores `max_kv_size` for Llama-family
  models, so a prompt that cannot fit is refused with the numbers before any memory is
  spent, and generation stops at `max_tokens`, so the KV cache never outgrows
  prompt + max_tokens <= context.
- The KV cache of the fixed chat prefix (the template up to the first user turn: the system
  prompt) is computed once and reused by every request that starts with it.
- Stop strings cut the answer; the string itself is not part of it.
- `should_stop` cancels mid-stream: between prefill chunks and between tokens. A cancelled
  request's KV cache is freed at once (dropped from the batch, or its generator closed).
- Each request reports TTFT, prefill and decode tokens/s and its peak memory.

MLX and the tokenizer are kept on separate threads when batching: the generation thread only
runs the model on token ids; detokenizing and stop strings happen in the caller's thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rag.config import LlmSettings
from rag.errors import ContextOverflowError, ModelLoadError, UsageError
from rag.planner import PREFILL_STEP_TOKENS
from rag.records import Delta

if TYPE_CHECKING:
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import PreTrainedTokenizerBase

    from rag.batching import Batcher
    from rag.remote import OpenAIEngine

# mlx-lm's KV quantization group size (the planner assumes the same).
KV_GROUP_SIZE = 64
# Distinct fixed prefixes whose KV cache is kept (system prompts: RAG, chat, rewrite, ...).
MAX_CACHED_PREFIXES = 4
# A prefix longer than this is not cached: it is a conversation, not a fixed system prompt.
MAX_PREFIX_TOKENS = 1024
# How often a request waiting on the generation thread checks its `should_stop`.
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Generation:
    """How a finished generation went; the last item `MlxEngine.stream` yields."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float
    finish_reason: str  # "stop", "length" or "cancelled"
    # Prompt tokens whose KV came from the prefix cache rather than a prefill.
    cached_tokens: int = 0
    prefill_tokens_per_s: float = 0.0
    # mx.get_peak_memory while the request ran; in a batch, the peak of the whole batch.
    peak_memory_bytes: int = 0
    # The answer's token ids (without the end-of-turn token); () from a remote engine.
    token_ids: tuple[int, ...] = ()

    @classmethod
    def timed(
        cls,
        text: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        *,
        start: float,
        first_token_at: float,
        end: float,
        cached_tokens: int = 0,
        peak_memory_bytes: int = 0,
        token_ids: tuple[int, ...] = (),
    ) -> Generation:
        """The Generation with its rates worked out from perf_counter readings.

        `first_token_at` is 0 when no token came.
        """
        ttft = first_token_at - start if first_token_at else 0.0
        decode_s = end - first_token_at if first_token_at else 0.0
        decoded = completion_tokens - 1
        return cls(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=round(ttft, 4),
            tokens_per_s=round(decoded / decode_s, 2) if decoded > 0 and decode_s > 0 else 0.0,
            finish_reason=finish_reason,
            cached_tokens=cached_tokens,
            prefill_tokens_per_s=(
                round((prompt_tokens - cached_tokens) / ttft, 2) if ttft > 0 else 0.0
            ),
            peak_memory_bytes=peak_memory_bytes,
            token_ids=token_ids,
        )


class Cancelled(Exception):
    """Raised inside a prefill to abandon it between chunks."""


class TokenSource(Protocol):
    """Where a request's tokens come from: this thread, or the generation thread.

    `next` returns ("token", id, finish_reason) with finish_reason None, "stop" (an
    end-of-turn token, which is `id`) or "length"; ("cancelled",); ("error", exception);
    or None when nothing came within `timeout` seconds.
    """

    cached_tokens: int
    peak_memory_bytes: int

    def next(self, timeout: float) -> tuple[Any, ...] | None: ...

    def cancel(self) -> None: ...


class MlxEngine:
    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: TokenizerWrapper,
        max_context_tokens: int,
        *,
        kv_bits: int | None = None,
        stop: Sequence[str] = (),
    ):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens
        # None keeps the KV cache in the activation dtype; 4 or 8 packs it (QuantizedKVCache)
        # from the first token, so the planner's KV bytes hold for every context length.
        self.kv_bits = kv_bits
        self.stop = tuple(s for s in stop if s)
        # Prefill chunk: the planner's, so its prediction of the prefill memory holds.
        self.prefill_step_tokens = PREFILL_STEP_TOKENS
        self.prefixes = PrefixCache()
        self._prefix_of_system: OrderedDict[str | None, tuple[int, ...]] = OrderedDict()
        self._batcher: Batcher | None = None
        # mlx-lm stops only on the model's EOS ids, which are often the document end
        # (<|endoftext|>) rather than the token that closes an assistant turn.
        end_of_turn = end_of_turn_token(tokenizer._tokenizer)
        if end_of_turn is not None:
            tokenizer.add_eos_token(end_of_turn)

    # -- tokens -------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt exactly as the model will see it (template included)."""
        ids = self._render(messages)
        prefix = self._fixed_prefix(messages)
        if 0 < len(prefix) < len(ids) and tuple(ids[: len(prefix)]) == prefix:
            self.prefixes.register(prefix)
        return ids

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        return render_chat(self.tokenizer, messages)

    def _fixed_prefix(self, messages: list[dict[str, str]]) -> tuple[int, ...]:
        """The tokens every prompt with this system prompt starts with (up to the user turn).

        Found as the common start of two renderings that differ only in the user's text,
        which is right whatever the template adds (a default system prompt, a date line).
        """
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        if system in self._prefix_of_system:
            self._prefix_of_system.move_to_end(system)
            return self._prefix_of_system[system]
        head = [{"role": "system", "content": system}] if system is not None else []
        try:
            a = self._render([*head, {"role": "user", "content": "a"}])
            b = self._render([*head, {"role": "user", "content": "b"}])
        except Exception:  # a template that refuses the probe: no prefix cache for it
            a = b = []
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefix = tuple(a[:n]) if n <= MAX_PREFIX_TOKENS else ()
        self._prefix_of_system[system] = prefix
        while len(self._prefix_of_system) > 4 * MAX_CACHED_PREFIXES:
            self._prefix_of_system.popitem(last=False)
        return prefix

    # -- generation ---------------------------------------------------------------------

    def stream(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        context_tokens: int,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] = lambda: False,
        stop: Sequence[str] | None = None,
    ) -> Iterator[Delta | Generation]:
        """Yield the answer as Deltas, then one Generation with the counts and timings.

        `stop` replaces the engine's stop strings (llm.stop) for this request.
        """
        check_request(prompt_ids, max_tokens, min(context_tokens, self.max_context_tokens))
        if should_stop():
            # Cancelled while it waited for the model: skip the prefill, which is the
            # slowest part on a CPU.
            yield Generation("", len(prompt_ids), 0, 0.0, 0.0, "cancelled")
            return
        stops = self.stop if stop is None else tuple(s for s in stop if s)
        start = time.perf_counter()
        batcher = self._batcher
        if batcher is not None and not batcher.is_generation_thread():
            source: TokenSource = batcher.submit(prompt_ids, max_tokens, temperature)
            idle = batcher.idle
        else:
            source = LocalTokens(self, prompt_ids, max_tokens, temperature, should_stop)
            idle = contextlib.nullcontext
        yield from self._text(source, idle, prompt_ids, start, should_stop, stops)

    def _text(
        self,
        source: TokenSource,
        idle: Callable[[], contextlib.AbstractContextManager[Any]],
        prompt_ids: list[int],
        start: float,
        should_stop: Callable[[], bool],
        stops: tuple[str, ...],
    ) -> Iterator[Delta | Generation]:
        detokenizer = self.tokenizer.detokenizer
        cut = StopText(stops)
        parts: list[str] = []
        tokens: list[int] = []
        count = 0
        first_token_at = 0.0
        finish = "length"
        try:
            while True:
                with idle():
                    event = source.next(POLL_S)
                if event is None:
                    if should_stop():
                        finish = "cancelled"
                        break
                    continue
                if event[0] == "error":
                    raise event[1]
                if event[0] == "cancelled":
                    finish = "cancelled"
                    break
                _, token, reason = event
                if count == 0:
                    first_token_at = time.perf_counter()
                count += 1
                if reason != "stop":
                    tokens.append(token)
                    detokenizer.add_token(token)
                if reason is not None:
                    detokenizer.finalize()
                text, stopped = cut.feed(detokenizer.last_segment)
                if text:
                    parts.append(text)
                    yield Delta(text)
                if stopped:
                    finish = "stop"
                    break
                if reason is not None:
                    finish = reason
                    break
                if should_stop():
                    finish = "cancelled"
                    break
        finally:
            # Frees the request's KV cache now, whatever ended it (also GeneratorExit).
            source.cancel()
        tail = cut.flush()  # text held back for a stop string that did not come
        if tail:
            parts.append(tail)
            yield Delta(tail)
        yield Generation.timed(
            "".join(parts),
            len(prompt_ids),
            count,
            finish,
            start=start,
            first_token_at=first_token_at if count else 0.0,
            end=time.perf_counter(),
            cached_tokens=source.cached_tokens,
            peak_memory_bytes=source.peak_memory_bytes,
            token_ids=tuple(tokens),
        )

    # -- batching -----------------------------------------------------------------------

    def start_batching(
        self,
        concurrency: int,
        idle: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> Batcher:
        """From now on run every request on one generation thread, `concurrency` at once.

        `idle` wraps each wait of a request thread for its tokens (the web service releases
        its model lock there, so other requests can embed and tokenize meanwhile).
        """
        from rag.batching import Batcher

        if self._batcher is not None:
            raise RuntimeError("batching already started")
        self._batcher = Batcher(self, concurrency, idle)
        return self._batcher

    def stop_batching(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()

    @property
    def batcher(self) -> Batcher | None:
        return self._batcher

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` where MLX runs: the generation thread when batching, else here.

        For other model work (scoring a prompt, say), which must not run MLX on a second
        thread while the generation thread does.
        """
        batcher = self._batcher
        if batcher is None or batcher.is_generation_thread():
            return fn(*args)
        return batcher.call(fn, *args)

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


class LocalTokens:
    """A request's tokens generated in this thread by mlx-lm's generate_step."""

    def __init__(
        self,
        engine: MlxEngine,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        should_stop: Callable[[], bool],
    ):
        self.engine = engine
        self.cached_tokens = 0
        self.peak_memory_bytes = 0
        self._should_stop = should_stop
        self._tokens = self._generate(prompt_ids, max_tokens, temperature)

    def _generate(
        self, prompt_ids: list[int], max_tokens: int, temperature: float
    ) -> Iterator[tuple[Any, ...]]:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, generation_stream, wired_limit
        from mlx_lm.sample_utils import make_sampler

        engine = self.engine
        eos = engine.tokenizer.eos_token_ids

        def progress(_done: int, _total: int) -> None:
            if self._should_stop():
                raise Cancelled

        mx.reset_peak_memory()
        with wired_limit(engine.model, [generation_stream]):
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
                    yield ("token", token, reason)
                    if reason is not None:
                        return
            except Cancelled:
                yield ("cancelled",)
            finally:
                steps.close()
                del cache
                self.peak_memory_bytes = max(self.peak_memory_bytes, mx.get_peak_memory())

    def next(self, timeout: float) -> tuple[Any, ...] | None:
        return next(self._tokens, ("cancelled",))

    def cancel(self) -> None:
        self._tokens.close()


class PrefixCache:
    """KV caches of fixed prompt prefixes, least recently used first out; thread-safe.

    A prefix is registered when a prompt that starts with it is encoded; its KV is computed
    the first time a request with it runs and kept until evicted.
    """

    def __init__(self, max_entries: int = MAX_CACHED_PREFIXES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], list[Any] | None] = OrderedDict()
        self._lock = threading.Lock()

    def register(self, prefix: tuple[int, ...]) -> None:
        with self._lock:
            if prefix in self._entries:
                self._entries.move_to_end(prefix)
                return
            self._entries[prefix] = None
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def match(self, prompt_ids: Sequence[int]) -> tuple[int, ...] | None:
        """The longest registered prefix of `prompt_ids` (shorter than it), if any."""
        with self._lock:
            found = [
                p
                for p in self._entries
                if len(p) < len(prompt_ids) and tuple(prompt_ids[: len(p)]) == p
            ]
        return max(found, key=len, default=None)

    def get(self, prefix: tuple[int, ...]) -> list[Any] | None:
        with self._lock:
            return self._entries.get(prefix)

    def put(self, prefix: tuple[int, ...], cache: list[Any]) -> None:
        with self._lock:
            self._entries[prefix] = cache
            self._entries.move_to_end(prefix)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            caches = [c for c in self._entries.values() if c is not None]
        return sum(layer.nbytes for cache in caches for layer in cache)


def snapshot_cache(cache: list[Any]) -> list[Any]:
    """Compact, evaluated copies of a KV cache's used part, safe to share between requests."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    copies = []
    for layer in cache:
        if type(layer) is not KVCache:  # e.g. a sliding-window layer: never shared
            raise TypeError(f"cannot share a {type(layer).__name__}")
        copy = KVCache()
        copy.keys = mx.contiguous(layer.keys[..., : layer.offset, :])
        copy.values = mx.contiguous(layer.values[..., : layer.offset, :])
        copy.offset = layer.offset
        copies.append(copy)
    mx.eval([c.state for c in copies])
    return copies


def clone_cache(stored: list[Any]) -> list[Any]:
    """A request's own KVCache objects over the stored arrays.

    The buffers are shared, never written: a KVCache holding exactly `offset` tokens grows
    into a new buffer on its first update, and the batch merge only reads them.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    clones = []
    for layer in stored:
        clone = KVCache()
        clone.keys, clone.values = mx.array(layer.keys), mx.array(layer.values)
        clone.offset = layer.offset
        clones.append(clone)
    return clones


class StopText:
    """Streamed text cut at the first stop string; holds back what may begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is safe to emit now, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buffer[: min(hits)], True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buffer)), hold, -1):
                if buffer.endswith(s[:n]):
                    hold = n
                    break
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        tail, self._pending = self._pending, ""
        return "" if self.stopped else tail


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


def check_request(prompt_ids: Sequence[int], max_tokens: int, context_tokens: int) -> None:
    """Refuse, with the numbers, a request whose prompt and answer cannot fit the context."""
    needed = len(prompt_ids) + max_tokens
    if needed > context_tokens:
        raise ContextOverflowError(
            f"the prompt needs {len(prompt_ids)} tokens + {max_tokens} for the answer = "
            f"{needed}, over the {context_tokens}-token context; ask a shorter question"
        )
    if not prompt_ids or max_tokens < 1:
        raise UsageError(
            f"nothing to generate: {len(prompt_ids)} prompt tokens, max_tokens {max_tokens}"
        )


def parse_stop(value: str) -> tuple[str, ...]:
    """llm.stop: stop strings separated by "|" ("" = none)."""
    return tuple(s for s in value.split("|") if s)


def model_path(spec: str, cache_dir: Path | None = None) -> Path:
    """The file or directory llm.model names: a packaged model's GGUF (rag.packaged; joined
    into `cache_dir`, llm.cache_dir, on first use) or a path."""
    from rag.packaged import packaged_model

    packaged = packaged_model(spec)
    return packaged.path(cache_dir) if packaged else Path(spec).expanduser()


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template, ready to answer."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


def load_engine(settings: LlmSettings, *, tune: bool = True) -> MlxEngine | OpenAIEngine:
    """Load the configured model: the bundled GGUF, a .gguf file, an MLX dir or a cached hub id.

    With llm.engine = "openai" only its tokenizer loads, and generation goes to
    llm.base_url (rag.remote). `tune=False` skips the backend tuning (rag.cputune), for
    measuring what it gains.
    """
    if settings.engine == "openai":
        from rag.remote import load_remote_engine

        return load_remote_engine(settings)
    return load_mlx_engine(settings, tune=tune)


def load_mlx_engine(settings: LlmSettings, *, tune: bool = True) -> MlxEngine:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = settings.model
    path = model_path(spec, settings.cache_path)
    options = {"kv_bits": settings.kv_bits or None, "stop": parse_stop(settings.stop)}
    if path.suffix == ".gguf":
        from rag.gguf import load_gguf

        model, tokenizer, config = load_gguf(path, tune=tune, cpu_threads=settings.cpu_threads)
        max_context = int(config["max_position_embeddings"])
        return MlxEngine(path.stem, model, tokenizer, max_context, **options)
    model, tokenizer, max_context = _load_mlx(spec, path, tune, settings.cpu_threads)
    return MlxEngine(Path(spec).name, model, tokenizer, max_context, **options)


def _load_mlx(
    spec: str, path: Path, tune: bool, cpu_threads: int
) -> tuple[Any, TokenizerWrapper, int]:
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
    if tune:
        from rag.cputune import tune_model

        tune_model(model, cpu_threads or None)
    max_context = int(config.get("max_position_embeddings") or config.get("max_seq_len") or 4096)
    return model, tokenizer, max_context

"""What every engine speaks: the `Engine` protocol and the vocabulary of a generation.

rag generates with one of three engines, all behind `Engine`: MLX in this process
(rag.llm.mlx, where it has a GPU), llama.cpp in this process (rag.llm.llamacpp, on CPU-only
machines), or an OpenAI-compatible server (rag.llm.remote). Whoever holds an engine (the
answerer, the web service, the benches, the doctor) never asks which one it is: what differs
is in `Engine.info`. Which engine runs here, and why, is rag.llm.load.

Every engine keeps the same promises: prompts are packed with the model's own tokenizer and
chat template (the ids counted are the ids evaluated); a request over the planned context is
refused with the numbers before generation; the answer streams as Deltas and ends with one
Generation; stop strings cut it; `should_stop` cancels it between prefill chunks and between
tokens; TTFT, prefill and decode rates come with every answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rag.errors import ContextOverflowError, UsageError
from rag.records import Delta

if TYPE_CHECKING:
    import contextlib

    from transformers import PreTrainedTokenizerBase

# How often a request waiting on its tokens checks its `should_stop`.
POLL_S = 0.05
# Distinct fixed prefixes whose KV cache is kept (system prompts: RAG, chat, rewrite, ...).
MAX_CACHED_PREFIXES = 4
# A prefix longer than this is not cached: it is a conversation, not a fixed system prompt.
MAX_PREFIX_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class Generation:
    """How a finished generation went; the last item `Engine.stream` yields."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float
    finish_reason: str  # "stop", "length" or "cancelled"
    # Prompt tokens whose KV came from the prefix cache rather than a prefill.
    cached_tokens: int = 0
    prefill_tokens_per_s: float = 0.0
    # The most memory the model's work held while the request ran (how each engine measures
    # it: its token source says); in a batch, the peak of the whole batch.
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


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What a loaded engine is and can do: for the doctor, /ready, /api/plan and the logs."""

    model: str
    kind: str  # "mlx", "llamacpp" or "openai"
    backend: str  # "metal", "cuda", "cpu", or the server's URL
    reason: str  # why this engine runs here
    # Whether `Engine.score` works (retrieval.rerank = "llm" needs it).
    can_score: bool
    # Requests generated at once at most (0: as many as llm.concurrency and the plan allow).
    max_concurrency: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for a log or a status page."""
        at_once = (
            "one request at a time"
            if self.max_concurrency == 1
            else "requests batched on one generation thread"
            if self.kind != "openai"
            else "the server batches"
        )
        return f"{self.kind} ({self.backend}): {self.reason}; {at_once}"


class Engine(Protocol):
    """The engine interface: MlxEngine, LlamaCppEngine and OpenAIEngine implement it."""

    name: str
    # The most tokens (prompt + answer) one request may use with this model.
    max_context_tokens: int
    # llm.stop: strings that end every answer unless a request gives its own.
    stop: tuple[str, ...]
    # The model's tokenizer (transformers' interface: encode, decode, chat template).
    tokenizer: Any

    @property
    def info(self) -> EngineInfo: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt exactly as the model will see it (template included)."""
        ...

    def stream(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        context_tokens: int,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] = ...,
        stop: Sequence[str] | None = None,
    ) -> Iterator[Delta | Generation]:
        """The answer as Deltas, then one Generation. `stop` replaces the engine's stops."""
        ...

    def score(self, prompt_ids: list[int], token_ids: Sequence[int]) -> list[float]:
        """The logits of `token_ids` as the next token after the prompt (no decoding).

        Only where `info.can_score`; others raise EngineError.
        """
        ...

    def start_batching(
        self,
        concurrency: int,
        idle: Callable[[], contextlib.AbstractContextManager[Any]] = ...,
    ) -> Any:
        """From now on every request goes through one generation thread (`rag serve`).

        `idle` wraps each wait of a request for its tokens (the web service releases its
        model lock there).
        """
        ...

    def stop_batching(self) -> None:
        """End the generation thread promptly: running requests end as cancelled."""
        ...


class Cancelled(Exception):
    """Raised inside a prefill to abandon it between chunks."""


@dataclass(frozen=True, slots=True)
class Token:
    """A generated token; `finish` None, "stop" (an end-of-turn token, which is `id`) or
    "length"."""

    id: int
    finish: str | None = None


@dataclass(frozen=True, slots=True)
class Stopped:
    """The request was cancelled before its next token."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Generation failed with `error`; the caller raises it."""

    error: BaseException


TokenEvent = Token | Stopped | Failed


class TokenSource(Protocol):
    """Where a request's tokens come from: this thread, or the generation thread.

    `next` returns the next event, or None when nothing came within `timeout` seconds.
    """

    cached_tokens: int
    peak_memory_bytes: int

    def next(self, timeout: float) -> TokenEvent | None: ...

    def cancel(self) -> None: ...


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


class TextStream:
    """Token ids to text as they come, for any transformers tokenizer.

    Decodes a short window of the latest tokens and emits what it adds to the text, holding
    back a character a later token may still complete (an incomplete UTF-8 sequence decodes
    to U+FFFD). The interface of mlx-lm's streaming detokenizers.
    """

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self.reset()

    def reset(self) -> None:
        self._tokens: list[int] = []
        self._prefix = 0  # where the decoding window starts
        self._read = 0  # tokens whose text has been emitted
        self.last_segment = ""

    def add_token(self, token: int) -> None:
        self._tokens.append(token)
        self.last_segment = self._emit(final=False)

    def finalize(self) -> None:
        self.last_segment = self._emit(final=True)

    def _emit(self, final: bool) -> str:
        decode = self._tokenizer.decode
        window = self._tokens[self._prefix :]
        before = decode(window[: self._read - self._prefix], skip_special_tokens=True)
        text = decode(window, skip_special_tokens=True)
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        # The window starts a few tokens back, so a token's leading space survives decoding.
        self._prefix, self._read = max(0, len(self._tokens) - 4), len(self._tokens)
        return text[len(before) :]


class PrefixCache:
    """KV caches of fixed prompt prefixes, least recently used first out; thread-safe.

    A prefix is registered when a prompt that starts with it is encoded; its KV (whatever
    the engine stores) is computed the first time a request with it runs and kept until
    evicted.
    """

    def __init__(self, max_entries: int = MAX_CACHED_PREFIXES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def register(self, prefix: tuple[int, ...]) -> None:
        with self._lock:
            if prefix in self._entries:
                self._entries.move_to_end(prefix)
                return
            self._entries[prefix] = None
            self._evict()

    def match(self, prompt_ids: Sequence[int]) -> tuple[int, ...] | None:
        """The longest registered prefix of `prompt_ids` (shorter than it), if any."""
        with self._lock:
            found = [
                p
                for p in self._entries
                if len(p) < len(prompt_ids) and tuple(prompt_ids[: len(p)]) == p
            ]
        return max(found, key=len, default=None)

    def get(self, prefix: tuple[int, ...]) -> Any:
        with self._lock:
            return self._entries.get(prefix)

    def put(self, prefix: tuple[int, ...], cache: Any) -> None:
        with self._lock:
            self._entries[prefix] = cache
            self._entries.move_to_end(prefix)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def values(self) -> list[Any]:
        with self._lock:
            return [c for c in self._entries.values() if c is not None]

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


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
    assert isinstance(text, str)  # tokenize=False renders text
    tail = text[text.rindex(reply) + len(reply) :]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    for token_id in tokenizer.encode(tail, add_special_tokens=False):
        if token_id in special:
            return str(tokenizer.convert_ids_to_tokens(token_id))
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


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template, ready to answer."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))

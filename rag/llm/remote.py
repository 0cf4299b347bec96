"""The `openai` engine: generation on an OpenAI-compatible server, everything else here.

vLLM, a llama.cpp server, Ollama or mlx_lm.server generates; rag still packs each prompt
with the served model's own tokenizer and chat template (llm.model names it), so the
planned context holds token for token, and it still checks citations, streams, cancels and
counts tokens exactly as with the local engine.

- Prompts go to /v1/completions as the text of the rendered chat template, so the server
  runs the very tokens rag counted, whichever template it would apply to a chat request.
- The model name sent is llm.served_model, fixed by the operator; nothing from a request
  chooses it, so a caller can never make the server load another model or an adapter.
- A reader thread takes the server's event stream, so a waiting request checks its
  `should_stop` every POLL_S even while the server is still prefilling; cancelling closes
  the connection, which is how these servers learn to stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import LlmSettings
from rag.errors import EngineError, ModelLoadError
from rag.llm.base import (
    POLL_S,
    EngineInfo,
    Generation,
    StopText,
    check_request,
    render_chat,
)
from rag.llm.gguf import load_gguf_tokenizer
from rag.models.catalog import read_model_spec
from rag.models.gguffile import gguf_context_tokens, read_gguf_header
from rag.models.packaged import model_path
from rag.records import Delta

if TYPE_CHECKING:
    import httpx
    from transformers import PreTrainedTokenizerBase

_DONE = object()


class OpenAIEngine:
    """The engine interface (rag.llm.base.Engine), served by an OpenAI-compatible API."""

    def __init__(
        self,
        name: str,
        tokenizer: PreTrainedTokenizerBase,
        base_url: str,
        max_context_tokens: int,
        *,
        served_model: str = "",
        api_key: str = "",
        stop: Sequence[str] = (),
        connect_timeout_s: float = 10.0,
    ):
        import httpx

        self.name = name
        self.tokenizer = tokenizer
        self.base_url = base_url.rstrip("/")
        self.max_context_tokens = max_context_tokens
        self.served_model = served_model
        self.stop = tuple(s for s in stop if s)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No read timeout: a long prefill sends nothing for a while; should_stop and the
        # service's deadline end a request, not a socket timer.
        self.client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(None, connect=connect_timeout_s)
        )
        self._idle: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
        # The server adds the BOS token itself when it tokenizes; the template has one too.
        bos = tokenizer.bos_token
        adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
        self._bos_text = bos if adds_bos else None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model=self.name,
            kind="openai",
            backend=self.base_url,
            reason='llm.engine = "openai"',
            can_score=False,
            max_concurrency=0,
        )

    # -- tokens -------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt exactly as the server will see it (template included)."""
        return render_chat(self.tokenizer, messages)

    def prompt_text(self, prompt_ids: Sequence[int]) -> str:
        text = str(self.tokenizer.decode(list(prompt_ids), skip_special_tokens=False))
        if self._bos_text and text.startswith(self._bos_text):
            text = text[len(self._bos_text) :]
        return text

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
        """Yield the answer as Deltas, then one Generation with the counts and timings."""
        check_request(prompt_ids, max_tokens, min(context_tokens, self.max_context_tokens))
        if should_stop():
            yield Generation("", len(prompt_ids), 0, 0.0, 0.0, "cancelled")
            return
        stops = self.stop if stop is None else tuple(s for s in stop if s)
        body: dict[str, Any] = {
            "prompt": self.prompt_text(prompt_ids),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.served_model:
            body["model"] = self.served_model
        if stops:
            body["stop"] = list(stops)
        start = time.perf_counter()
        events = _EventStream(self.client, f"{self.base_url}/completions", body)
        yield from self._text(events, prompt_ids, start, should_stop, stops)

    def _text(
        self,
        events: _EventStream,
        prompt_ids: list[int],
        start: float,
        should_stop: Callable[[], bool],
        stops: tuple[str, ...],
    ) -> Iterator[Delta | Generation]:
        cut = StopText(stops)  # servers differ on stop strings; cutting here is certain
        parts: list[str] = []
        first_at = 0.0
        finish = "length"
        usage: dict[str, Any] = {}
        try:
            while True:
                with self._idle():
                    event = events.next(POLL_S)
                if event is None:
                    if should_stop():
                        finish = "cancelled"
                        break
                    continue
                if event is _DONE:
                    break
                if isinstance(event, Exception):
                    raise event
                usage = event.get("usage") or usage
                choices = event.get("choices") or []
                if not choices:
                    continue
                choice = choices[0]
                piece = choice.get("text") or ""
                if piece and not first_at:
                    first_at = time.perf_counter()
                text, stopped = cut.feed(piece)
                if text:
                    parts.append(text)
                    yield Delta(text)
                if stopped:
                    finish = "stop"
                    break
                if choice.get("finish_reason"):
                    finish = "stop" if choice["finish_reason"] == "stop" else "length"
                if should_stop():
                    finish = "cancelled"
                    break
        finally:
            events.close()
        tail = cut.flush()
        if tail:
            parts.append(tail)
            yield Delta(tail)
        text = "".join(parts)
        # The server's count when it gives one (it includes an end-of-turn token, as the
        # local engine's does); else the text's own tokens.
        completion = usage.get("completion_tokens")
        if not completion:
            completion = len(self.tokenizer.encode(text, add_special_tokens=False))
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        yield Generation.timed(
            text,
            len(prompt_ids),
            int(completion),
            finish,
            start=start,
            first_token_at=first_at,
            end=time.perf_counter(),
            cached_tokens=cached,
        )

    def score(self, prompt_ids: list[int], token_ids: Sequence[int]) -> list[float]:
        raise EngineError(
            "a generation server gives no logits to score passages with; "
            'retrieval.rerank = "llm" needs a local engine (llm.engine = "auto")'
        )

    # -- what the service calls on any engine --------------------------------------------

    def start_batching(
        self,
        concurrency: int,
        idle: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        """The server batches; here each request only gives up the model lock while it waits."""
        self._idle = idle

    def stop_batching(self) -> None:
        self._idle = contextlib.nullcontext
        self.client.close()


class _EventStream:
    """A server-sent event stream read on its own thread, handed over through a queue."""

    def __init__(self, client: httpx.Client, url: str, body: dict[str, Any]) -> None:
        self._client = client
        self._url = url
        self._body = body
        self._queue: queue.Queue[Any] = queue.Queue()
        self._response: httpx.Response | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="rag-remote", daemon=True)
        self._thread.start()

    def next(self, timeout: float) -> Any:
        """The next event (a dict), _DONE, an EngineError, or None after `timeout` s."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._closed.set()
        response = self._response
        if response is not None:
            response.close()  # tells the server the client is gone

    def _read(self) -> None:
        url = self._url
        try:
            with self._client.stream("POST", url, json=self._body) as response:
                self._response = response
                if response.status_code != 200:
                    detail = response.read().decode("utf-8", "replace")[:300]
                    self._queue.put(
                        EngineError(
                            f"the generation server at {url} answered "
                            f"{response.status_code}: {detail}"
                        )
                    )
                    return
                for line in response.iter_lines():
                    if self._closed.is_set():
                        return
                    if not line.startswith("data:"):
                        continue  # comments (keep-alives) and blank separators
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        break
                    self._queue.put(json.loads(data))
            self._queue.put(_DONE)
        except Exception as e:  # httpx, a bad event, or the stream closed under it
            if not self._closed.is_set():
                self._queue.put(
                    EngineError(f"the generation server at {url} failed: {e}; check llm.base_url")
                )


def load_remote_engine(settings: LlmSettings) -> OpenAIEngine:
    """The `openai` engine: llm.model's tokenizer, generation at llm.base_url."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer, model_context = load_tokenizer(settings.model, settings.cache_path)
    api_key = os.environ.get(settings.api_key_env, "") if settings.api_key_env else ""
    engine = OpenAIEngine(
        settings.served_model or Path(settings.model).name,
        tokenizer,
        settings.base_url,
        model_context,
        served_model=settings.served_model,
        api_key=api_key,
        stop=settings.stop,
        connect_timeout_s=settings.connect_timeout_s,
    )
    served_context = server_context_tokens(engine)
    if served_context:
        engine.max_context_tokens = min(model_context, served_context)
    return engine


def server_context_tokens(engine: OpenAIEngine) -> int | None:
    """The context the server was started with, where its /v1/models says so.

    vLLM lists `max_model_len`; a llama.cpp server `meta.n_ctx_train`, and its /props the
    n_ctx it runs with. Servers that say nothing (mlx_lm.server, Ollama) leave the model's
    own maximum, which llm.context_tokens caps anyway.
    """
    import httpx

    url = f"{engine.base_url}/models"
    try:
        response = engine.client.get(url)
    except httpx.HTTPError as e:
        raise EngineError(
            f"cannot reach the generation server at {engine.base_url}: {e}. Start it, or fix "
            "llm.base_url (its OpenAI API root, e.g. http://127.0.0.1:8080/v1)"
        ) from e
    if response.status_code in (401, 403):
        raise EngineError(
            f"the generation server at {engine.base_url} refused the key ({response.status_code})"
            "; put its API key in the environment variable llm.api_key_env names"
        )
    if response.status_code != 200:
        raise EngineError(f"{url} answered {response.status_code}; is llm.base_url right?")
    try:
        models = response.json().get("data") or []
    except (ValueError, AttributeError):
        return None  # mlx_lm.server may answer an empty body here: it says nothing
    for entry in models:
        if engine.served_model and entry.get("id") != engine.served_model:
            continue
        for value in (entry.get("max_model_len"), (entry.get("meta") or {}).get("n_ctx_train")):
            if isinstance(value, int) and value > 0:
                return value
    return None


def load_tokenizer(
    model: str, cache_dir: Path | None = None
) -> tuple[PreTrainedTokenizerBase, int]:
    """(tokenizer with its chat template, the model's maximum context) for llm.model.

    llm.model may be a GGUF file (or a packaged model, joined into `cache_dir`) of any
    architecture transformers can read the tokenizer of, a model or tokenizer-only
    directory, or a hub id in the local Hugging Face cache: only the tokenizer is needed
    here, never the weights.
    """
    path = model_path(model, cache_dir)
    try:
        if path.suffix == ".gguf":
            tokenizer, context = _gguf_tokenizer(path)
        else:
            from transformers import AutoTokenizer

            name = str(path) if path.exists() else model
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
            if path.is_dir():
                context = _directory_context(path)
                if not context:
                    raise ModelLoadError(
                        f"{path} does not state the model's context length: add the served "
                        "model's config.json (max_position_embeddings) next to the tokenizer"
                    )
            else:
                context = read_model_spec(model).max_context_tokens
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise ModelLoadError(f"cannot load the tokenizer of llm.model = {model!r}: {e}") from e
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"llm.model = {model!r} has no chat template to pack prompts with")
    return tokenizer, context


def _gguf_tokenizer(path: Path) -> tuple[PreTrainedTokenizerBase, int]:

    metadata = read_gguf_header(path)[0]
    context = gguf_context_tokens(metadata, path)
    return load_gguf_tokenizer(path, metadata.get("tokenizer.chat_template")), context


def _directory_context(directory: Path) -> int:
    """The context a model or tokenizer directory states (config.json, else the tokenizer's
    own limit); 0 when it states none."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    config = {**config, **(config.get("text_config") or {})}
    for key in ("max_position_embeddings", "max_seq_len", "n_positions"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    try:
        tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return 0
    limit = tokenizer_config.get("model_max_length")
    # transformers writes 1e30 there when the tokenizer has no limit of its own.
    return int(limit) if isinstance(limit, int | float) and 0 < limit < 1e7 else 0

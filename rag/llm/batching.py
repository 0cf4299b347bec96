"""Continuous batching: concurrent requests generated together on one generation thread.

Requests come from any thread (`Batcher.submit`, which `MlxEngine.stream` calls once
batching is on), each with its own event queue and cancel flag. The generation thread owns
MLX: it runs mlx-lm's BatchGenerator over up to `concurrency` requests at once (the planned
concurrency: what the memory plan fits), lets new ones join between decode steps, and hands
each request its tokens as they come; requests beyond that wait in arrival order. A request
that is cancelled (its client left, its deadline passed, a stop string came) is dropped from
the batch at the next step, which frees its KV cache while the others go on.

The fixed prefix of a prompt (the system prompt) enters the batch from the engine's prefix
cache; the first request with a new prefix prefills it as a segment of its own, and its KV is
stored at the segment's end for the next ones.

Where it cannot batch, the same thread generates one request at a time with the engine's
single-request token source (`local_tokens`), behind the same interface:
- llama.cpp (rag.llm.llamacpp): one sequence in one context, and its Llama object is not
  thread-safe, so this thread is the only one that touches it; requests queue;
- llm.kv_bits: mlx-lm 0.32 cannot merge a QuantizedKVCache into a batch ("does not yet
  support batching with history"; BatchKVCache has no to_quantized), and its own server
  serializes --kv-bits requests for the same reason;
- a model whose caches cannot merge (checked on make_prompt_cache's output).

`close` ends the thread promptly: the request it is running sees its cancel flag at the
next prefill chunk or token, and every waiting one ends as cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from rag.llm.base import Failed, PrefixCache, Stopped, Token, TokenEvent, TokenSource
from rag.llm.kvcache import clone_cache, snapshot_cache

log = logging.getLogger("rag.llm.batching")

_CLOSE = object()


class BatchRequest:
    """One request's side of the batch: its tokens arrive here (a rag.llm.mlx.TokenSource)."""

    def __init__(self, batcher: Batcher, prompt_ids: list[int], max_tokens: int, temp: float):
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.temperature = temp
        # Written by the generation thread, read by the request's thread when it ends.
        self.cached_tokens = 0
        self.peak_memory_bytes = 0
        self.cancelled = False
        self.store_prefix: tuple[int, ...] | None = None
        self._batcher = batcher
        self._events: queue.SimpleQueue[TokenEvent] = queue.SimpleQueue()

    def next(self, timeout: float) -> TokenEvent | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def cancel(self) -> None:
        self.cancelled = True

    def push(self, event: TokenEvent) -> None:
        self._events.put(event)


class _Call:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.fn, self.args = fn, args
        self.future: Future[Any] = Future()


class BatchingEngine(Protocol):
    """What the batcher uses of an in-process engine (rag.llm.local.LocalEngine)."""

    model: Any
    tokenizer: Any
    prefill_step_tokens: int
    prefixes: PrefixCache

    def can_batch(self) -> bool: ...

    def local_tokens(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        should_stop: Callable[[], bool],
    ) -> TokenSource: ...


class Batcher:
    def __init__(
        self,
        engine: BatchingEngine,
        concurrency: int,
        idle: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ):
        self.engine = engine
        self.concurrency = max(1, concurrency)
        self.idle = idle
        self.batched = engine.can_batch()
        self._closing = threading.Event()
        # Read by anyone, written by the generation thread after each step.
        self.running = 0
        self.waiting = 0
        self.cache_bytes = 0
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rag-generate", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], max_tokens: int, temperature: float) -> BatchRequest:
        request = BatchRequest(self, list(prompt_ids), max_tokens, temperature)
        self._inbox.put(request)
        return request

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the generation thread, between two batch steps."""
        item = _Call(fn, args)
        self._inbox.put(item)
        with self.idle():
            return item.future.result()

    def is_generation_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread: the running request ends at its next prefill chunk or token."""
        self._closing.set()
        self._inbox.put(_CLOSE)
        if not self.is_generation_thread():
            self._thread.join(timeout)

    # -- the generation thread ----------------------------------------------------------

    def _run(self) -> None:
        running: dict[int, BatchRequest] = {}
        waiting: deque[BatchRequest] = deque()
        generator = self._new_generator() if self.batched else None
        try:
            while True:
                for item in self._take(block=not running and not waiting):
                    if isinstance(item, BatchRequest):
                        waiting.append(item)  # cancelled below if the thread is closing
                    elif isinstance(item, _Call) and not self._closing.is_set():
                        self._do(item)
                    elif isinstance(item, _Call):
                        item.future.cancel()
                if self._closing.is_set():
                    return
                waiting = deque(r for r in waiting if not r.cancelled)
                if generator is None:
                    if waiting:
                        self.waiting = len(waiting) - 1
                        self._serve_alone(waiting.popleft())
                    self.waiting = len(waiting)
                    continue
                try:
                    self._step(generator, running, waiting)
                except Exception as e:  # fail this batch, not the service
                    log.exception("batch step failed")
                    for request in [*running.values(), *waiting]:
                        request.push(Failed(e))
                    running.clear()
                    waiting.clear()
                    generator.close()
                    generator = self._new_generator()
                if not running:
                    import mlx.core as mx

                    # Idle: return freed buffers, and start the next batch's peak afresh.
                    mx.clear_cache()
                    mx.reset_peak_memory()
                self.running, self.waiting = len(running), len(waiting)
                self.cache_bytes = generator.prompt_cache_nbytes if running else 0
        finally:
            for request in [*running.values(), *waiting]:
                request.push(Stopped())
            for item in self._take(block=False):
                if isinstance(item, BatchRequest):
                    item.push(Stopped())
                elif isinstance(item, _Call):
                    item.future.cancel()
            if generator is not None:
                generator.close()
            self.running = self.waiting = self.cache_bytes = 0

    def _take(self, block: bool) -> list[Any]:
        items = [self._inbox.get()] if block else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _do(self, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn(*call.args))
        except BaseException as e:
            call.future.set_exception(e)

    def _new_generator(self) -> Any:
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator(
            self.engine.model,
            stop_tokens=[[t] for t in self.engine.tokenizer.eos_token_ids],
            completion_batch_size=self.concurrency,
            prefill_batch_size=self.concurrency,
            prefill_step_size=self.engine.prefill_step_tokens,
        )

    def _step(
        self, generator: Any, running: dict[int, BatchRequest], waiting: deque[BatchRequest]
    ) -> None:
        import mlx.core as mx

        gone = [uid for uid, r in running.items() if r.cancelled]
        if gone:
            generator.remove(gone)  # drops their KV caches from the batch
            for uid in gone:
                del running[uid]
        while waiting and len(running) < self.concurrency:
            request = waiting.popleft()
            running[self._insert(generator, request)] = request
        if not running:
            return
        prompt_responses, responses = generator.next()
        for p in prompt_responses:
            prefilled = running.get(p.uid)
            prefix = prefilled.store_prefix if prefilled is not None else None
            if prefilled is None or prefix is None:
                continue
            if p.end_of_segment and p.progress[0] == len(prefix):
                cache, _tokens = generator.extract_cache([p.uid])[p.uid]
                self.engine.prefixes.put(prefix, snapshot_cache(cache))
                prefilled.store_prefix = None
        for r in responses:
            answering = running.get(r.uid)
            if answering is None:
                continue
            if r.finish_reason is not None:
                answering.peak_memory_bytes = mx.get_peak_memory()
                del running[r.uid]
            answering.push(Token(r.token, r.finish_reason))

    def _insert(self, generator: Any, request: BatchRequest) -> int:
        from mlx_lm.sample_utils import make_sampler

        sampler = make_sampler(temp=request.temperature)
        ids = request.prompt_ids
        prefix = self.engine.prefixes.match(ids)
        stored = self.engine.prefixes.get(prefix) if prefix is not None else None
        if prefix is not None and stored is not None:
            request.cached_tokens = len(prefix)
            (uid,) = generator.insert_segments(
                [[ids[len(prefix) :]]],
                max_tokens=[request.max_tokens],
                caches=[clone_cache(stored)],
                all_tokens=[list(prefix)],
                samplers=[sampler],
            )
        elif prefix is not None:
            # The prefix as a segment of its own, so its KV can be taken at its end.
            request.store_prefix = prefix
            (uid,) = generator.insert_segments(
                [[list(prefix), ids[len(prefix) :]]],
                max_tokens=[request.max_tokens],
                samplers=[sampler],
            )
        else:
            (uid,) = generator.insert([ids], max_tokens=[request.max_tokens], samplers=[sampler])
        return uid

    def _serve_alone(self, request: BatchRequest) -> None:
        """The unbatched path: one request start to end, on this thread."""
        tokens = self.engine.local_tokens(
            request.prompt_ids,
            request.max_tokens,
            request.temperature,
            lambda: request.cancelled or self._closing.is_set(),
        )
        try:
            while True:
                event = tokens.next(0.0)
                assert event is not None  # a local source runs until it has an event
                request.cached_tokens = tokens.cached_tokens
                if isinstance(event, Token) and event.finish is not None:
                    request.peak_memory_bytes = tokens.peak_memory_bytes
                request.push(event)
                if not isinstance(event, Token) or event.finish is not None:
                    return
                if request.cancelled or self._closing.is_set():
                    request.push(Stopped())
                    return
        except Exception as e:
            log.exception("generation failed")
            request.push(Failed(e))
        finally:
            tokens.cancel()
            request.peak_memory_bytes = max(request.peak_memory_bytes, tokens.peak_memory_bytes)

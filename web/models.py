"""The loaded models, the threads they run on, and admission control.

Models load in the background so `/health` answers at once and `/ready` says when questions
can be asked. The event loop never blocks: each admitted request runs on a worker thread.
Generation goes through the engine's one generation thread, which batches up to the planned
concurrency of requests (rag.llm.batching; llama.cpp: one at a time) and is the only thread that
runs the model. The other model
work (embedding, tokenizing, searching) holds the model lock, so the embedder and the
tokenizer never see two threads at once; a request gives the lock up while it waits for its
tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from rag.accounts.cost import request_cost
from rag.accounts.usage import UsageLedger, UsageRecord, busy_seconds
from rag.config import Settings
from rag.errors import DeadlineError, NotReadyError, OverloadedError, RagError
from rag.qa.answerer import Answerer, load_answerer
from rag.records import Answer
from web.metrics import record_answer, record_cost, track_memory, track_queue_depth

T = TypeVar("T")
log = logging.getLogger("rag.web")

# How soon the service sees documents that `rag ingest` wrote from another process.
READ_CONSISTENCY_S = 1.0
# How long shutdown waits for the generation thread to finish its step.
CLOSE_WAIT_S = 2.0
SHUTTING_DOWN = "the service is shutting down; retry in a few seconds"
_END = object()


class _Slot:
    """One admitted request; releasing twice is harmless."""

    def __init__(self, host: ModelHost) -> None:
        self._host: ModelHost | None = host

    def release(self) -> None:
        if self._host is not None:
            self._host._admitted -= 1
            self._host = None


class ModelHost:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.answerer: Answerer | None = None
        self.load_error: str | None = None
        # Admission keeps at most max_queue requests in flight, so none waits for a worker;
        # one more for loading the models.
        self._executor = ThreadPoolExecutor(
            max_workers=settings.server.max_queue + 1, thread_name_prefix="rag-model"
        )
        self._loading: Future[None] | None = None
        self._admitted = 0
        self._lock = threading.Lock()  # the embedder and the tokenizer: one thread at a time
        self._holding = threading.local()
        self.concurrency = 1
        self._ledger = UsageLedger(settings.storage.data_path)
        # Set on SIGTERM: every request's should_stop sees it, so generations end at their
        # next step (a prefill chunk or a token) and the server can exit.
        self.stopping = threading.Event()

    def start(self) -> None:
        track_queue_depth(lambda: self._admitted)
        self._loading = self._executor.submit(self._load)

    def _load(self) -> None:
        try:
            answerer = load_answerer(self.settings, read_consistency_s=READ_CONSISTENCY_S)
            self.concurrency = answerer.concurrency(self.settings.llm.concurrency)
            answerer.engine.start_batching(self.concurrency, idle=self._unlocked)
            answerer.warm_up()
            track_memory(answerer.planned_mlx_bytes)
            self.answerer = answerer
            log.info(
                "models loaded; engine %s; generating up to %d requests at once",
                answerer.engine.info.describe(),
                self.concurrency,
            )
        except RagError as e:
            self.load_error = e.message
            log.error("cannot load models: %s", e.message)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("cannot load models")

    def _record_usage(self, answer: Answer, collection: str, key: str) -> None:
        """Charge the answer its generation seconds (rag report cost, rag_cost_total)."""
        usage = answer.usage
        if usage.completion_tokens == 0:
            return  # answered without the model ("not found"): no machine time to charge
        busy_s = busy_seconds(usage.ttft_s, usage.completion_tokens, usage.tokens_per_s)
        record_cost(request_cost(self.settings.cost, busy_s), collection, key)
        entry = UsageRecord(
            time.time(),
            key,
            collection,
            usage.prompt_tokens,
            usage.completion_tokens,
            busy_s,
            model=self.answerer.engine.name if self.answerer else "",
            ttft_s=usage.ttft_s,
            tokens_per_s=usage.tokens_per_s,
        )
        try:
            self._ledger.record(entry)
        except RagError as e:  # a full disk must not fail the answer the user is waiting for
            log.warning("%s", e.message)

    def require(self) -> Answerer:
        if self.answerer is None:
            raise NotReadyError(
                f"the models failed to load: {self.load_error}"
                if self.load_error
                else "the models are still loading; retry in a few seconds"
            )
        return self.answerer

    @property
    def queue_depth(self) -> int:
        """Model requests admitted and not finished: running plus waiting."""
        return self._admitted

    def _admit(self) -> _Slot:
        if self.stopping.is_set():
            raise NotReadyError(SHUTTING_DOWN)
        limit = self.settings.server.max_queue
        if self._admitted >= limit:
            raise OverloadedError(
                f"{self._admitted} requests are already running or waiting "
                f"(server.max_queue = {limit}); retry shortly"
            )
        self._admitted += 1
        return _Slot(self)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on a worker, holding the model lock (admission-controlled)."""
        slot = self._admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._locked, fn, *args
            )
        finally:
            slot.release()

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            self._holding.lock = True
            try:
                return fn(*args)
            finally:
                self._holding.lock = False

    @contextlib.contextmanager
    def _unlocked(self) -> Iterator[None]:
        """Give the model lock up for a while, if this thread holds it (the engine's idle)."""
        if not getattr(self._holding, "lock", False):
            yield
            return
        self._holding.lock = False
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._holding.lock = True

    def iterate(
        self,
        make_items: Callable[[Callable[[], bool]], Iterator[T]],
        collection: str = "",
        key: str = "anonymous",
    ) -> AsyncIterator[T]:
        """Run a generator on the model thread and yield its items here as they come.

        Admission happens now, so a full queue is a 503 before any response starts.
        `make_items` receives a `should_stop` callable that turns true when the consumer
        stops early (the client went away) or the request's deadline passes; generation then
        ends at the next token and frees the model thread for the next request.
        """
        slot = self._admit()
        deadline = time.monotonic() + self.settings.server.request_timeout_s
        items = self._iterate(make_items, slot, deadline, (collection, key))
        # A response that is never iterated (client gone before the first byte) never runs
        # the generator's `finally`; the slot is then released when it is collected.
        weakref.finalize(items, slot.release)
        return items

    async def _iterate(
        self,
        make_items: Callable[[Callable[[], bool]], Iterator[T]],
        slot: _Slot,
        deadline: float,
        labels: tuple[str, str],
    ) -> AsyncIterator[T]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def should_stop() -> bool:
            return stop.is_set() or self.stopping.is_set() or time.monotonic() > deadline

        def produce() -> None:
            try:
                items = self._locked(lambda: iter(make_items(should_stop)))
                while True:
                    # Each step holds the model lock; the engine gives it up while it waits
                    # for tokens from the generation thread.
                    item = self._locked(next, items, _END)
                    if item is _END:
                        break
                    if isinstance(item, Answer):
                        # Here on the worker thread: the ledger writes a file.
                        record_answer(item, *labels)
                        self._record_usage(item, *labels)
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
            except BaseException as e:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        task = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            await asyncio.shield(task)
            slot.release()

    async def answer(
        self,
        make_items: Callable[[Callable[[], bool]], Iterator[Any]],
        collection: str = "",
        key: str = "anonymous",
    ) -> Answer:
        """Run an answer stream to its end and return the Answer (for non-streaming calls)."""
        final = None
        async for item in self.iterate(make_items, collection, key):
            if isinstance(item, Answer):
                final = item
        if final is None:
            raise RagError("generation ended without an answer")
        if final.finish_reason == "cancelled":
            if self.stopping.is_set():
                raise NotReadyError(SHUTTING_DOWN)
            # The caller is still waiting, so only the deadline can have stopped it.
            raise DeadlineError(
                "the request ran past server.request_timeout_s = "
                f"{self.settings.server.request_timeout_s:g} s and was stopped"
            )
        return final

    def close(self) -> None:
        self.stopping.set()
        if self.answerer is not None:
            # The generation thread leaves at its next step; a step is at most one prefill
            # chunk, which on a slow CPU can take seconds. It is a daemon thread: exit need
            # not wait for it longer than this.
            closer = threading.Thread(
                target=self.answerer.engine.stop_batching, name="rag-close", daemon=True
            )
            closer.start()
            closer.join(CLOSE_WAIT_S)
        self._executor.shutdown(wait=False, cancel_futures=True)

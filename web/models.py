"""The loaded models and the one thread they run on.

Models load in the background so `/health` answers at once and `/ready` says when questions
can be asked. All model work (embedding, generation) runs on a single dedicated thread: the
event loop never blocks, and the tokenizer and MLX never see two threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from rag.answer import Answerer, load_answerer
from rag.config import Settings
from rag.errors import DeadlineError, NotReadyError, OverloadedError, RagError
from rag.records import Answer
from web.metrics import record_answer, track_queue_depth

T = TypeVar("T")
log = logging.getLogger("rag.web")

# How soon the service sees documents that `rag ingest` wrote from another process.
READ_CONSISTENCY_S = 1.0


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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-model")
        self._loading: Future[None] | None = None
        self._admitted = 0

    def start(self) -> None:
        track_queue_depth(lambda: self._admitted)
        self._loading = self._executor.submit(self._load)

    def _load(self) -> None:
        try:
            self.answerer = load_answerer(self.settings, read_consistency_s=READ_CONSISTENCY_S)
            log.info("models loaded")
        except RagError as e:
            self.load_error = e.message
            log.error("cannot load models: %s", e.message)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("cannot load models")

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
        limit = self.settings.server.max_queue
        if self._admitted >= limit:
            raise OverloadedError(
                f"{self._admitted} requests are already running or waiting "
                f"(server.max_queue = {limit}); retry shortly"
            )
        self._admitted += 1
        return _Slot(self)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the model thread and await its result (admission-controlled)."""
        slot = self._admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            slot.release()

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
            return stop.is_set() or time.monotonic() > deadline

        def produce() -> None:
            try:
                for item in make_items(should_stop):
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
                if isinstance(value, Answer):
                    record_answer(value, *labels)
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
            # The caller is still waiting, so only the deadline can have stopped it.
            raise DeadlineError(
                "the request ran past server.request_timeout_s = "
                f"{self.settings.server.request_timeout_s:g} s and was stopped"
            )
        return final

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

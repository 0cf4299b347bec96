"""The loaded models and the one thread they run on.

Models load in the background so `/health` answers at once and `/ready` says when questions
can be asked. All model work (embedding, generation) runs on a single dedicated thread: the
event loop never blocks, and the tokenizer and MLX never see two threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from rag.answer import Answerer, load_answerer
from rag.config import Settings
from rag.errors import NotReadyError, RagError

T = TypeVar("T")
log = logging.getLogger("rag.web")

# How soon the service sees documents that `rag ingest` wrote from another process.
READ_CONSISTENCY_S = 1.0


class ModelHost:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.answerer: Answerer | None = None
        self.load_error: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-model")
        self._loading: Future[None] | None = None

    def start(self) -> None:
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

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the model thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def iterate(
        self, make_items: Callable[[Callable[[], bool]], Iterator[T]]
    ) -> AsyncIterator[T]:
        """Run a generator on the model thread and yield its items here as they come.

        `make_items` receives a `should_stop` callable. When the consumer stops early (the
        client went away), it turns true and generation ends at the next token, freeing the
        model thread. An exception in the generator is raised here.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in make_items(stop.is_set):
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
            except BaseException as e:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        task = asyncio.ensure_future(self.run(produce))
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

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

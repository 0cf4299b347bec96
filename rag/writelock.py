"""One writer per index: an advisory lock file in the data dir.

`flock` locks belong to the open file, so the kernel drops them when the holder exits or is
killed (kill -9 included): a crash never leaves the index locked. Within one process the
lock is re-entrant and shared by every Store on the same directory, so a writer that calls
another writing method never waits on itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rag.errors import StoreError

LOCK_FILE = "writer.lock"
_POLL_S = 0.1

_registry_guard = threading.Lock()
_registry: dict[str, _ProcessLock] = {}


class _ProcessLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


def _lock_for(path: Path) -> _ProcessLock:
    key = str(path.resolve())
    with _registry_guard:
        if key not in _registry:
            _registry[key] = _ProcessLock(path)
        return _registry[key]


def holder(data_path: Path) -> str:
    """Who holds the lock, as written by the holder ("pid 123 rag ingest"), or ""."""
    try:
        return (data_path / LOCK_FILE).read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def write_lock(
    data_path: Path, wait_s: float, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the index's writer lock, waiting up to `wait_s` for another writer to finish."""
    import fcntl

    lock = _lock_for(data_path / LOCK_FILE)
    deadline = time.monotonic() + wait_s
    if not lock.thread_lock.acquire(timeout=max(wait_s, 0.0)):
        raise StoreError(_busy(data_path, wait_s))
    try:
        if lock.depth == 0:
            data_path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise StoreError(_busy(data_path, wait_s)) from None
                    if on_wait and not told:
                        on_wait(f"waiting for the index lock: {holder(data_path) or 'held'}")
                        told = True
                    time.sleep(_POLL_S)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} {_command()}\n".encode(), 0)
            lock.fd = fd
        lock.depth += 1
        try:
            yield
        finally:
            lock.depth -= 1
            if lock.depth == 0 and lock.fd is not None:
                os.close(lock.fd)  # closing the file releases the flock
                lock.fd = None
    finally:
        lock.thread_lock.release()


def _busy(data_path: Path, wait_s: float) -> str:
    who = holder(data_path) or "another process"
    return (
        f"the index at {data_path} is being written by {who}; waited {wait_s:g}s "
        "(storage.lock_wait_s). Try again when it has finished"
    )


def _command() -> str:
    import sys

    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:2]))

"""One writer per index: an advisory lock file in the data dir, or a lease in the bucket.

For an index under the data dir: `flock` locks belong to the open file, so the kernel drops
them when the holder exits or is killed (kill -9 included): a crash never leaves the index
locked. For an index in an object store (storage.uri) a flock would exclude only the
writers of this machine, so the lock is the bucket's writer lease instead (rag.index.lease): one
writer across every machine that shares the index. Within one process either is
re-entrant and shared by every Store on the same index, so a writer that calls another
writing method never waits on itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import StoreError
from rag.index.lease import Lease

if TYPE_CHECKING:
    from rag.index.lease import Lease
    from rag.index.location import IndexLocation

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
        self.lease: Lease | None = None


class Hold:
    """What a writer holds; `check()` before each commit (a lease can be lost meanwhile)."""

    def __init__(self, lock: _ProcessLock) -> None:
        self._lock = lock

    def check(self) -> None:
        if self._lock.lease is not None:
            self._lock.lease.check()


def _lock_for(path: Path, key: str = "") -> _ProcessLock:
    key = key or str(path.resolve())
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
    data_path: Path,
    wait_s: float,
    on_wait: Callable[[str], None] | None = None,
    *,
    location: IndexLocation | None = None,
    lease_s: float = 30.0,
) -> Iterator[Hold]:
    """Hold the index's writer lock, waiting up to `wait_s` for another writer to finish.

    With a remote `location` the lock is the bucket's writer lease, refreshed until the
    block ends; the yielded Hold's `check()` says whether it is still held.
    """
    if location is not None and location.remote:
        with _lease_lock(location, wait_s, on_wait, lease_s) as hold:
            yield hold
        return
    import fcntl

    lock = _lock_for(data_path / LOCK_FILE)
    deadline = time.monotonic() + wait_s
    if not lock.thread_lock.acquire(timeout=max(wait_s, 0.0)):
        raise StoreError(_busy(data_path, wait_s))
    try:
        if lock.depth == 0:
            fd = _open_lock(data_path, lock.path)
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
            yield Hold(lock)
        finally:
            lock.depth -= 1
            if lock.depth == 0 and lock.fd is not None:
                os.close(lock.fd)  # closing the file releases the flock
                lock.fd = None
    finally:
        lock.thread_lock.release()


def _open_lock(data_path: Path, path: Path) -> int:
    """The lock file's descriptor; a data dir we cannot write is one StoreError, not a trace."""
    try:
        data_path.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StoreError(
            f"cannot write to the data dir {data_path} ({e.strerror}): make it writable, or "
            "set storage.data_dir (RAG_STORAGE_DATA_DIR) to a folder you can write"
        ) from e


@contextlib.contextmanager
def _lease_lock(
    location: IndexLocation, wait_s: float, on_wait: Callable[[str], None] | None, lease_s: float
) -> Iterator[Hold]:

    lock = _lock_for(Path(LOCK_FILE), f"lease:{location.uri}")
    if not lock.thread_lock.acquire(timeout=max(wait_s, 0.0)):
        raise StoreError(
            f"the index at {location.describe()} is being written by another thread of this "
            f"process; waited {wait_s:g}s (storage.lock_wait_s)"
        )
    try:
        if lock.depth == 0:
            lease = Lease(location, lease_s, _command())
            lease.acquire(wait_s, on_wait)
            lock.lease = lease
        lock.depth += 1
        try:
            yield Hold(lock)
        finally:
            lock.depth -= 1
            if lock.depth == 0 and lock.lease is not None:
                lock.lease.release()
                lock.lease = None
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

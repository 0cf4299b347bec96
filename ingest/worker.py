"""Parse untrusted files in child processes bounded in wall-clock time and address space.

pypdf and the text parsers are pure Python: a hostile file can loop or allocate without end,
and no thread can interrupt that. Each file gets its own short-lived process (forked from a
forkserver that has the parsers imported, so a start costs milliseconds), with RLIMIT_AS set
before it reads a byte; the parent kills it at the deadline. LanceDB warns against fork(), so
the children never fork from the ingesting process itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from ingest import deadline
from ingest.budget import TextBudget
from ingest.ocr import OcrOptions
from ingest.parsers import ParsedDocument, parse_file
from rag.errors import ParseError

# Modules the forkserver imports once, so that each child starts with them loaded.
_PRELOAD = [
    "ingest.parsers",
    "ingest.discovery",
    "ingest.pdf",
    "ingest.webpage",
    "pypdf",
    "pypdfium2",
    "pdfplumber",  # 0.24 s to import: once, not in every child that meets a ruled page
    "charset_normalizer",
]


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float
    memory_bytes: int
    max_file_bytes: int
    budget: TextBudget = field(default_factory=TextBudget)
    ocr: OcrOptions = field(default_factory=OcrOptions)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one job: a value, or a failure with its reason."""

    key: Any
    value: Any = None
    reason: str = ""
    message: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.reason)


@dataclass
class _Job:
    key: Any
    func: Callable[..., Any]
    args: tuple[Any, ...]
    label: str
    process: Any = None
    conn: Connection = field(init=False)  # the read end of its pipe, once started
    deadline: float = 0.0


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start children without the caller's __main__ script (the rag CLI, pytest, a bench).

    multiprocessing re-imports that script in every child so that objects defined in it can
    be unpickled; ours only run ingest code, and the import can cost more than the parse.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _child(
    conn: Connection, func: Callable[..., Any], args: tuple[Any, ...], limits: Limits
) -> None:
    """Entry point of a parse process: apply the limits, run, send one message, exit."""
    import resource

    # Its own process group: killing the group at the deadline also stops what the job
    # started (tesseract), which would otherwise run on as an orphan.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    memory = limits.memory_bytes
    with contextlib.suppress(ValueError, OSError):  # macOS refuses RLIMIT_AS; the deadline holds
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # The parent kills us at the deadline; if the parent itself is killed first, the kernel
    # still stops a runaway parse (SIGXCPU) once it has used that much CPU. The hard limit
    # stays where it was so that OCR's extra time (ingest/deadline.py) can raise the soft one.
    cpu_s = int(limits.timeout_s) + 5
    with contextlib.suppress(ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        if hard != resource.RLIM_INFINITY:
            cpu_s = min(cpu_s, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, hard))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        import pypdf

        # Never run an external JBIG2 decoder on untrusted input.
        pypdf.overwrite_configuration(jbig2dec_binary=None)
        deadline.install(conn, limits.timeout_s)
        message: tuple[Any, ...] = ("ok", func(*args))
    except ParseError as e:
        message = ("error", e.reason, e.message)
    except MemoryError:
        message = ("error", "memory", "parsing needed more memory than ingest.parse_memory_mb")
    except RecursionError:
        message = ("error", "malformed", "nesting too deep to parse")
    except Exception as e:  # a parser bug on odd input fails this file, not the batch
        message = ("error", "malformed", f"{type(e).__name__}: {e}")
    try:
        conn.send(message)
    except MemoryError:
        conn.send(("error", "memory", "the parsed text is larger than ingest.parse_memory_mb"))
    conn.close()


class ParsePool:
    """Runs jobs in up to `workers` isolated processes; collect() hands back what finished.

    A job may ask for more time as it goes (OCR, ingest/deadline.py); `on_extend(key, pages)`
    hears each such request with the pages the job has OCR'd so far.
    """

    def __init__(
        self,
        workers: int,
        limits: Limits,
        on_extend: Callable[[Any, int], None] | None = None,
    ) -> None:
        self.workers = max(1, workers)
        self.limits = limits
        self.on_extend = on_extend
        self._ctx = _context()
        self._waiting: list[_Job] = []
        self._running: list[_Job] = []

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        return len(self._waiting) + len(self._running)

    def submit_file(self, key: Any, path: Path, name: Path | None = None) -> None:
        """Parse the regular file `path`, named `name` (a link's own path) in its report."""
        limits = self.limits
        args = (path, limits.max_file_bytes, limits.budget, name or path, limits.ocr)
        self.submit(key, parse_file, args, str(name or path))

    def submit(self, key: Any, func: Callable[..., Any], args: tuple[Any, ...], label: str) -> None:
        self._waiting.append(_Job(key, func, args, label))
        self._start_waiting()

    def collect(self, timeout_s: float | None = 0.0) -> list[Outcome]:
        """Outcomes of the jobs that finished; waits up to `timeout_s` (None: for one) first."""
        until = None if timeout_s is None else time.monotonic() + timeout_s
        done: list[Outcome] = []
        while self._running:
            now = time.monotonic()
            limit = min(job.deadline for job in self._running) - now
            if until is not None:
                limit = min(limit, until - now)
            ready = wait(
                [job.conn for job in self._running]
                + [job.process.sentinel for job in self._running],
                timeout=max(0.0, limit),
            )
            done.extend(self._reap(ready))
            self._start_waiting()
            if done or (until is not None and time.monotonic() >= until):
                break
        return done

    def close(self) -> None:
        for job in self._running:
            _kill(job)
            job.process.join()
            job.conn.close()
        self._running = []
        self._waiting = []

    def _start_waiting(self) -> None:
        while self._waiting and len(self._running) < self.workers:
            job = self._waiting.pop(0)
            receive, send = self._ctx.Pipe(duplex=False)
            job.process = self._ctx.Process(
                target=_child,
                args=(send, job.func, job.args, self.limits),
                name=f"rag-parse {job.label}"[:60],
                daemon=True,
            )
            with _main_module_hidden():
                job.process.start()
            send.close()  # the child holds the only write end: EOF means it died
            job.conn = receive
            job.deadline = time.monotonic() + self.limits.timeout_s
            self._running.append(job)

    def _reap(self, ready: list[Any]) -> Iterator[Outcome]:
        now = time.monotonic()
        still: list[_Job] = []
        for job in self._running:
            if job.conn in ready:
                outcome = self._receive(job)
                if outcome is None:  # more time granted; the job goes on
                    still.append(job)
                    continue
            elif job.process.sentinel in ready and not job.conn.poll():
                outcome = self._crashed(job)
            elif now >= job.deadline and not job.conn.poll():
                _kill(job)
                seconds = self.limits.timeout_s
                outcome = Outcome(job.key, None, "timeout", f"parsing took over {seconds:g}s")
            else:
                still.append(job)
                continue
            job.process.join()
            job.conn.close()
            yield outcome
        self._running = still

    def _receive(self, job: _Job) -> Outcome | None:
        try:
            message = job.conn.recv()
        except (EOFError, OSError):
            job.process.join()
            return self._crashed(job)
        if message[0] == deadline.EXTEND:
            job.deadline += message[1]
            if self.on_extend is not None:
                self.on_extend(job.key, message[2])
            return None
        if message[0] == "ok":
            return Outcome(job.key, message[1])
        return Outcome(job.key, None, message[1], message[2])

    def _crashed(self, job: _Job) -> Outcome:
        # Not the group: once the child is reaped its pid, the group's id, may be reused. A
        # tesseract it left behind ends with its page (its own time limit).
        job.process.join()
        code = job.process.exitcode
        # SIGKILL from the kernel is how an allocation past the limit usually ends.
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return Outcome(job.key, None, "crashed", f"the parser process died ({how})")


def _kill(job: _Job) -> None:
    """Kill the job's process and its process group (what it started: tesseract)."""
    # The group exists only once the child made it (os.setpgid in _child): before that no
    # group has the child's pid as its id, and killpg finds none. Called only before the
    # child is reaped, so that id is still the child's.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(job.process.pid, signal.SIGKILL)
    job.process.kill()


def run_isolated(func: Callable[..., Any], args: tuple[Any, ...], limits: Limits) -> Any:
    """Run one function under the limits; raise ParseError with the reason when it fails."""
    with ParsePool(1, limits) as pool:
        pool.submit(None, func, args, getattr(func, "__name__", "job"))
        outcomes: list[Outcome] = []
        while not outcomes:
            outcomes = pool.collect(None)
    outcome = outcomes[0]
    if outcome.failed:
        raise ParseError(outcome.message, outcome.reason)
    return outcome.value


def parse_isolated(path: Path, limits: Limits) -> ParsedDocument:
    """Parse one file in its own bounded process."""
    args = (path, limits.max_file_bytes, limits.budget, None, limits.ocr)
    value = run_isolated(parse_file, args, limits)
    assert isinstance(value, ParsedDocument)
    return value


def default_workers() -> int:
    # Embedding keeps the other cores busy; one parser ahead is enough on small machines.
    return 1 if (os.cpu_count() or 1) <= 4 else 2

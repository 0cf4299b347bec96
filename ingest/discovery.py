"""Which paths an ingest reads: every entry under the given paths classified before any read.

One walk with os.scandir and lstat sorts each entry into a document to read, something
skipped by rule (hidden, unsupported type, a link leaving the folder, a second name for a
file already read) or something that cannot be read (a link loop or a link to nothing, a
FIFO, socket or device under a document's name, a folder we may not list). Nothing but a
regular file is ever opened, and `open_regular` checks that again on the open descriptor,
so a path swapped for a FIFO between the walk and the read still cannot block the reader.

The link rule: a symbolic link is followed only when its target stays inside the folder
being ingested, and the document is recorded under the link's own path there. Paths named
on the command line are followed wherever they lead (the user named them).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rag.errors import ParseError, RagError

SUFFIXES: dict[str, str] = {
    ".pdf": "pdf",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".mkd": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".rst": "rst",
    ".rest": "rst",
}


def kind_of(path: Path) -> str | None:
    """The format we read `path` as, or None when it is of a kind we skip."""
    return SUFFIXES.get(path.suffix.lower())


# Skip reasons (by rule; the run succeeds) and failure reasons (exit code 1), as reported.
HIDDEN, UNSUPPORTED, LINK_OUTSIDE, DUPLICATE = "hidden", "unsupported", "link_outside", "duplicate"
LINK_LOOP, SPECIAL_FILE, UNREADABLE = "link_loop", "special_file", "unreadable"


@dataclass(frozen=True, slots=True)
class Entry:
    """A document to read."""

    path: Path  # as found: the given path, or a walk under it (names, messages)
    location: Path  # absolute, its folder resolved: the document's recorded path and identity
    target: Path  # the regular file to read: `location`, or a link's target


@dataclass
class Found:
    files: list[Entry] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)
    failed: list[tuple[Path, str, str]] = field(default_factory=list)  # (path, reason, message)
    # Folders that could not be listed: what was stored under them is not known to be gone.
    unlisted: list[Path] = field(default_factory=list)


def discover(paths: Iterable[Path]) -> Found:
    """Classify everything under `paths` (files and folders); nothing is opened."""
    walk = _Walk()
    for path in paths:
        walk.root(Path(path))
    return walk.finish()


def located(path: Path) -> Path:
    """Absolute path with its folder resolved and its own name kept (a link stays a link)."""
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / path.name


@contextmanager
def open_regular(path: Path, max_bytes: int) -> Iterator[tuple[BinaryIO, int]]:
    """Open `path` for reading only if it is a regular file of at most `max_bytes`.

    The checks run on the opened descriptor, so nothing swapped in after discovery (a FIFO,
    a device, a link) is ever read; O_NONBLOCK keeps even the open of a FIFO from waiting.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ParseError(f"{path}: became a link after it was listed", UNREADABLE) from e
        raise ParseError(f"cannot read {path}: {e.strerror}", UNREADABLE) from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ParseError(f"{path}: {_kind_of_special(info.st_mode)}, not a file", SPECIAL_FILE)
        if info.st_size > max_bytes:
            raise ParseError(
                f"{path}: {info.st_size / 2**20:.0f} MiB is over ingest.max_file_mb "
                f"({max_bytes / 2**20:.0f} MiB)",
                "too_large",
            )
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, info.st_size


def read_regular(path: Path, max_bytes: int) -> bytes:
    with open_regular(path, max_bytes) as (f, size):
        # Never more than the size checked: a file growing under us is cut there.
        return f.read(size)


def _kind_of_special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


class _Walk:
    def __init__(self) -> None:
        self.found = Found()
        self.seen: set[Path] = set()  # locations taken, and targets read
        self.links: list[tuple[Entry, Path]] = []  # links inside, decided after the walk

    def root(self, path: Path) -> None:
        try:
            info = path.stat()  # a path the user names is followed wherever it leads
        except FileNotFoundError:
            if path.is_symlink():
                self._fail(path, UNREADABLE, "the link points to nothing")
                return
            raise RagError(f"{path} does not exist") from None
        except OSError as e:
            reason = LINK_LOOP if e.errno == errno.ELOOP else UNREADABLE
            self._fail(path, reason, e.strerror or str(e))
            return
        if stat.S_ISDIR(info.st_mode):
            self._folder(path, path.resolve())
        elif stat.S_ISREG(info.st_mode):
            self._file(Entry(path, located(path), path.resolve()))
        else:
            self._fail(path, SPECIAL_FILE, f"{_kind_of_special(info.st_mode)}, not a file")

    def finish(self) -> Found:
        # A link inside the folder is read under its own name unless its target is read
        # under a name of its own already: one file, one document.
        for entry, target in self.links:
            if target in self.seen:
                self.found.skipped.append((entry.path, DUPLICATE))
            else:
                self.seen.add(target)
                self.found.files.append(entry)
        return self.found

    def _folder(self, folder: Path, inside: Path) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            self._fail(folder, UNREADABLE, f"cannot list it: {e.strerror}")
            self.found.unlisted.append(located(folder))
            return
        for entry in entries:
            self._entry(folder / entry.name, entry, inside)

    def _entry(self, path: Path, entry: os.DirEntry[str], inside: Path) -> None:
        if entry.name.startswith("."):
            self.found.skipped.append((path, HIDDEN))
            return
        try:
            is_link = entry.is_symlink()
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError as e:
            self._fail(path, UNREADABLE, e.strerror or str(e))
            return
        if is_link:
            self._link(path, inside)
        elif stat.S_ISDIR(mode):
            self._folder(path, inside)
        elif stat.S_ISREG(mode):
            self._file(Entry(path, located(path), located(path)))
        elif kind_of(path) is None:
            self.found.skipped.append((path, UNSUPPORTED))
        else:
            self._fail(path, SPECIAL_FILE, f"{_kind_of_special(mode)}, not a file")

    def _link(self, path: Path, inside: Path) -> None:
        try:
            target = path.resolve(strict=True)
        except (RuntimeError, OSError) as e:  # Python < 3.13 raises RuntimeError on a loop
            if kind_of(path) is None:
                self.found.skipped.append((path, UNSUPPORTED))
            elif isinstance(e, FileNotFoundError):
                self._fail(path, UNREADABLE, "the link points to nothing")
            elif isinstance(e, RuntimeError) or e.errno == errno.ELOOP:
                self._fail(path, LINK_LOOP, "a loop of symbolic links")
            else:
                self._fail(path, UNREADABLE, e.strerror or str(e))
            return
        if not target.is_relative_to(inside):
            self.found.skipped.append((path, LINK_OUTSIDE))
            return
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            # Its files are read where they lie, inside the same folder.
            self.found.skipped.append((path, DUPLICATE))
        elif kind_of(path) is None:
            self.found.skipped.append((path, UNSUPPORTED))
        elif stat.S_ISREG(mode):
            self.links.append((Entry(path, located(path), target), target))
        else:
            self._fail(path, SPECIAL_FILE, f"{_kind_of_special(mode)}, not a file")

    def _file(self, entry: Entry) -> None:
        if kind_of(entry.path) is None:
            self.found.skipped.append((entry.path, UNSUPPORTED))
        elif entry.location in self.seen:
            return  # named twice (`rag ingest docs docs/a.md`): one document
        else:
            self.seen.update((entry.location, entry.target))
            self.found.files.append(entry)

    def _fail(self, path: Path, reason: str, message: str) -> None:
        self.found.failed.append((path, reason, message))


def size_bytes(path: Path) -> int:
    """The file's size for progress estimates: 0 when it cannot be read (it fails later)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0

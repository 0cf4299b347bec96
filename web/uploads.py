"""Uploaded files: read from a multipart request within the limits, stored under made-up names.

A client's file name is never used as a path. Each file is written to this server's staging
folder under a random name (keeping only a suffix the parsers know, which decides how the
file is read); the name the client sent, cleaned, becomes the document's `source`, shown as
text and nothing else. Its job deletes it once ingested (what is kept is the original,
rag.index.originals).

Staging folders: each server process stages in its own `uploads/staging-<id>/`, holding an
exclusive lock on the folder's `.lock` file while it runs. A server that dies mid-job leaves
its folder behind, and the kernel releases its lock; the next server to start deletes every
folder whose lock it can take, so a crash never leaves uploaded bytes in the data dir for
good. Replicas sharing a data dir on one host see each other's locks and keep out of each
other's folders.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from ingest.discovery import kind_of
from rag.config import ServerSettings
from rag.errors import StoreError, TooLargeError, UsageError

UPLOADS_DIR = "uploads"
STAGING_PREFIX = "staging-"
LOCK_FILE = ".lock"
FORM_FIELD = "files"
MAX_NAME_CHARS = 200
MIB = 2**20

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upload:
    name: str  # the client's file name, cleaned: the document's source
    path: Path  # where it is stored, under a generated name
    size_bytes: int


def uploads_path(data_path: Path) -> Path:
    return data_path / UPLOADS_DIR


class Staging:
    """This process's staging folder, made and locked on the first upload (see the module's
    docstring); `start` deletes the folders of servers that stopped without deleting theirs."""

    def __init__(self, data_path: Path) -> None:
        self.root = uploads_path(data_path)
        self._directory: Path | None = None
        self._lock_fd = -1

    def start(self) -> int:
        """Delete the staging folders no live process holds the lock of; the number deleted."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for folder in self.root.glob(f"{STAGING_PREFIX}*"):
            try:
                fd = os.open(folder / LOCK_FILE, os.O_RDWR)
            except OSError:
                continue  # not a staging folder, or one another server is making
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its server is running
            else:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            finally:
                os.close(fd)
        if removed:
            log.info("deleted %d staging folder(s) of uploads that stopped servers left", removed)
        return removed

    @property
    def directory(self) -> Path:
        if self._directory is None:
            # Made and locked under a name that `start` ignores, then renamed: a server
            # starting meanwhile never finds this folder unlocked.
            name = uuid.uuid4().hex
            making = self.root / f".making-{name}"
            try:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                making.mkdir(mode=0o700)
                self._lock_fd = os.open(making / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                making.rename(self.root / f"{STAGING_PREFIX}{name}")
            except OSError as e:
                raise StoreError(
                    f"cannot make a folder for uploads under {self.root}: {e.strerror}; "
                    "storage.data_dir must be writable"
                ) from e
            self._directory = self.root / f"{STAGING_PREFIX}{name}"
        return self._directory

    def close(self) -> None:
        """Delete the folder unless an upload still waits in it (the next start will), unlock."""
        if self._directory is None:
            return
        try:
            if [p.name for p in self._directory.iterdir()] == [LOCK_FILE]:
                shutil.rmtree(self._directory)
        except OSError:
            pass  # the next start deletes it
        os.close(self._lock_fd)
        self._directory = None


def stored_upload(document_path: str, data_path: Path) -> Path | None:
    """The upload the service stored for a document, or None for a file `rag ingest` read.

    The index records resolved paths; only a file directly in uploads/ is the service's,
    so removing a document never deletes a file of the user's.
    """
    if not document_path:
        return None
    path = Path(document_path)
    return path if path.parent == uploads_path(data_path).resolve() else None


def request_limit_bytes(server: ServerSettings) -> int:
    return server.upload_max_request_mb * MIB


def clean_name(filename: str | None) -> str:
    """The display name of an uploaded file: its last path part, printable, bounded."""
    # Browsers send a base name; other clients may send a path, control characters or
    # nothing. Whatever it is, it is only shown and compared, never opened.
    base = re.split(r"[\\/]", filename or "")[-1]
    base = " ".join("".join(ch for ch in base if ch.isprintable()).split())
    if base in ("", ".", ".."):
        base = "upload"
    return base[:MAX_NAME_CHARS]


async def receive_uploads(
    request: Request[Any, Any, Any], server: ServerSettings, directory: Path
) -> list[Upload]:
    """Read the request's `files` parts and store them; 413 past any limit, 400 if malformed."""
    try:
        form = await request.form()
    except RequestEntityTooLarge:
        raise TooLargeError(
            f"the upload is over server.upload_max_request_mb = {server.upload_max_request_mb} "
            "MiB; send fewer or smaller files per request"
        ) from None
    except ClientException as e:
        # Litestar's multipart part limit is a 400 that says "Request Entity Too Large".
        if "Too Large" in str(e.detail):
            raise TooLargeError(
                f"the upload has too many parts; send at most "
                f"server.upload_max_files = {server.upload_max_files} files"
            ) from None
        raise UsageError(f"the upload is not valid multipart/form-data: {e.detail}") from None
    parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    try:
        files = [v for v in form.getall(FORM_FIELD, []) if isinstance(v, UploadFile)]
        if not files:
            raise UsageError(
                f"send the documents as multipart/form-data file fields named {FORM_FIELD!r}"
            )
        if len(files) > server.upload_max_files:
            raise TooLargeError(
                f"{len(files)} files is over server.upload_max_files = {server.upload_max_files}"
            )
        names = [clean_name(f.filename) for f in files]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UsageError(f"file name given more than once: {', '.join(repeated)}")
        return await asyncio.to_thread(_store_all, files, names, server, directory)
    finally:
        for part in parts:
            await part.close()


def _store_all(
    files: list[UploadFile], names: list[str], server: ServerSettings, directory: Path
) -> list[Upload]:
    limit = server.upload_max_file_mb * MIB
    sizes = [_size(f) for f in files]
    for name, size in zip(names, sizes, strict=True):
        if size > limit:
            raise TooLargeError(
                f"{name}: {size / MIB:.1f} MiB is over server.upload_max_file_mb = "
                f"{server.upload_max_file_mb} MiB"
            )
    stored: list[Upload] = []
    try:
        for f, name, size in zip(files, names, sizes, strict=True):
            stored.append(Upload(name, _store(f, name, directory), size))
    except OSError as e:
        for upload in stored:
            upload.path.unlink(missing_ok=True)
        raise UsageError(f"cannot store the upload: {e.strerror}") from e
    return stored


def _size(f: UploadFile) -> int:
    f.file.seek(0, os.SEEK_END)
    size = f.file.tell()
    f.file.seek(0)
    return size


def _store(f: UploadFile, name: str, directory: Path) -> Path:

    # Only a suffix a parser reads survives (it picks the parser); any other file keeps none
    # and its job reports it as unsupported.
    suffix = Path(name).suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) and kind_of(Path(name)) else ""
    path = directory / f"{uuid.uuid4().hex}{suffix}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(f.file, out, 1 << 20)
    return path

"""Ingested originals: each file's bytes kept once under the data dir, named by their SHA-256.

The document viewer shows a citation in its original file (a PDF page, a Markdown file), so
ingest keeps the file it read at `<data_dir>/originals/<sha256>`. The name is the document's
`doc_hash`, so the same bytes ingested twice (under two names, in two collections) are kept
once, and "is this original still needed?" is "does any document of the index still have
this hash?". Every change happens under the index's writer lock, so no ingest can start to
refer to an original while a removal decides it is unreferenced:

- ingest keeps an original before the commit that refers to it (a crash in between leaves
  an unreferenced file, never a document without its original);
- a removal (`rag docs rm`, DELETE /api/documents) and a re-ingest with new bytes delete the
  originals no document refers to any more;
- `rag maintain` deletes every unreferenced original (a crash's leftovers), and with
  `storage.keep_originals = false` all of them.

Originals stay on the machine that ingested them, also when the index is in an object store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from rag.config import StorageSettings
from rag.errors import StoreError
from rag.index.store import Store, StoredDocument

ORIGINALS_DIR = "originals"
_HASH = re.compile(r"^[0-9a-f]{64}$")
_COPY_BYTES = 1 << 20


class Originals:
    """The originals directory of one data dir; `keep_new` False keeps no new ones."""

    def __init__(self, data_path: Path, keep_new: bool = True) -> None:
        self.directory = data_path / ORIGINALS_DIR
        self.keep_new = keep_new

    @classmethod
    def from_settings(cls, storage: StorageSettings) -> Originals:
        return cls(storage.data_path, storage.keep_originals)

    def path(self, doc_hash: str) -> Path | None:
        """The kept original with these bytes, or None (never a path outside the directory)."""
        if not _HASH.match(doc_hash):
            return None
        path = self.directory / doc_hash
        return path if path.is_file() else None

    def hashes(self) -> set[str]:
        """The hashes of every kept original."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return set()
        except OSError as e:
            raise StoreError(f"cannot list {self.directory}: {e.strerror}") from e
        return {n for n in names if _HASH.match(n)}

    def size_bytes(self) -> int:
        total = 0
        for name in self.hashes():
            try:
                total += (self.directory / name).stat().st_size
            except FileNotFoundError:
                continue
        return total

    def keep(self, source: BinaryIO, doc_hash: str, max_bytes: int) -> None:
        """Keep `source`'s bytes as the original of `doc_hash` (nothing when already kept).

        The bytes are hashed as they are copied: a file that changed since it was parsed (or
        grew past `max_bytes`) is refused with StoreError, so an original always holds the
        bytes its chunks came from.
        """
        if not self.keep_new or not _HASH.match(doc_hash) or self.path(doc_hash):
            return
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            digest = hashlib.sha256()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                left = max_bytes + 1
                while left > 0 and (block := source.read(min(left, _COPY_BYTES))):
                    digest.update(block)
                    out.write(block)
                    left -= len(block)
                out.flush()
                os.fsync(out.fileno())
            if left <= 0 or digest.hexdigest() != doc_hash:
                raise StoreError("the file changed while it was ingested; ingest it again")
            os.replace(tmp, self.directory / doc_hash)
        except OSError as e:
            raise StoreError(
                f"cannot keep the original under {self.directory}: {e.strerror or e} "
                "(storage.keep_originals = false keeps none)"
            ) from e
        finally:
            # Gone once renamed; one left by a failure here is pruned by `rag maintain`.
            with contextlib.suppress(OSError):
                tmp.unlink()

    def release(self, hashes: Iterable[str], referenced: set[str]) -> int:
        """Delete the originals of `hashes` that no document refers to; how many went."""
        return self._delete(h for h in set(hashes) if h not in referenced)

    def prune(self, referenced: set[str]) -> int:
        """Delete every original that no document refers to, and unfinished copies."""
        try:
            stale = [e.path for e in os.scandir(self.directory) if e.name.endswith(".tmp")]
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise StoreError(f"cannot list {self.directory}: {e.strerror}") from e
        for path in stale:
            Path(path).unlink(missing_ok=True)
        return self._delete(h for h in self.hashes() if h not in referenced)

    def _delete(self, hashes: Iterable[str]) -> int:
        count = 0
        for doc_hash in hashes:
            if not _HASH.match(doc_hash):
                continue
            try:
                (self.directory / doc_hash).unlink()
                count += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StoreError(f"cannot delete {self.directory / doc_hash}: {e.strerror}") from e
        return count


def remove_documents(
    store: Store, originals: Originals, collection: str, match: Callable[[StoredDocument], bool]
) -> tuple[list[StoredDocument], int]:
    """Store.remove_documents, then delete the originals no document refers to any more,
    under one hold of the writer lock."""
    with store.writer():
        docs, chunks = store.remove_documents(collection, match)
        if docs:
            originals.release({d.doc_hash for d in docs}, store.doc_hashes())
    return docs, chunks

"""The index's LanceDB database: its tables, which one is active, and what they take on disk.

An index holds one active table of chunks (`chunks`, or `chunks-<ns>` after a rebuild with
another embedding model) named by the `active-table` pointer beside the tables: a file in the
data dir, or an object in the bucket. `rag ingest --reembed` and `rag maintain`'s rewrite
build a new table and switch the pointer only when it is complete, so a reader sees the old
table or the new one, never half of one. Every LanceDB handle in the project is opened here;
rag.index.store reads and writes documents through it, and `rag maintain`, `rag backup` and
`rag doctor` read table statistics through it.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from rag.errors import StoreError
from rag.index.location import (
    IndexLocation,
    local_location,
    read_object,
    s3_client,
    store_error,
    write_object,
)

TABLE = "chunks"
POINTER_FILE = "active-table"


class Tables:
    """The tables of one index, local or in a bucket."""

    def __init__(self, db: Any, data_path: Path, location: IndexLocation) -> None:
        self.db = db
        self.data_path = data_path
        self.location = location
        self._client: Any | None = None

    def active_name(self) -> str:
        """The active table's name: the pointer's, else the first table's name."""
        if self.location.remote:
            text = read_object(self.s3(), self.location, POINTER_FILE)
            return (text or b"").decode().strip() or TABLE
        try:
            return (self.data_path / POINTER_FILE).read_text().strip() or TABLE
        except FileNotFoundError:
            return TABLE
        except OSError as e:
            raise StoreError(f"cannot read {self.data_path / POINTER_FILE}: {e}") from e

    def set_active(self, name: str) -> None:
        if self.location.remote:
            write_object(self.s3(), self.location, POINTER_FILE, (name + "\n").encode())
        else:
            _replace_file(self.data_path / POINTER_FILE, name)

    def open(self, name: str) -> Any | None:
        """A handle of table `name`, or None when there is no such table."""
        try:
            return self.db.open_table(name)
        except (OSError, RuntimeError, ValueError) as e:
            # Only LanceDB's "Table 'chunks' was not found" means there is no table; refused
            # credentials or an unreachable store must not read as an empty index.
            if "was not found" not in str(e):
                raise self.error(e, f"opening table {name}") from e
            return None

    def create(self, name: str, schema: Any, *, exist_ok: bool = False) -> Any:
        try:
            return self.db.create_table(name, schema=schema, exist_ok=exist_ok)
        except (OSError, RuntimeError, ValueError) as e:
            raise self.error(e, f"creating table {name}") from e

    def names(self) -> list[str]:
        listing = self.db.list_tables()
        return list(getattr(listing, "tables", listing))

    def drop(self, name: str) -> None:
        """Drop a table if it can be; a reader may still hold it, and a later call retries."""
        with contextlib.suppress(Exception):
            self.db.drop_table(name)

    def drop_stale(self) -> None:
        """Drop the chunk tables that are not active: a finished rebuild's old one, or a
        crashed rebuild's half-built one."""
        active = self.active_name()
        for name in self.names():
            if name != active and (name == TABLE or name.startswith(f"{TABLE}-")):
                self.drop(name)

    def error(self, e: BaseException, doing: str) -> StoreError:
        if self.location.remote:
            return store_error(e, self.location, doing)
        return StoreError(f"{doing} at {self.location.uri}: {e}")

    def s3(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.location)
        return self._client

    def size_bytes(self) -> int:
        """Bytes of every table: files under lancedb/, or objects under the bucket's prefix."""
        location = self.location
        if not location.remote:
            return _tree_bytes(Path(location.uri))
        total = 0
        try:
            pages = self.s3().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=location.bucket, Prefix=location.key("")):
                total += sum(int(item["Size"]) for item in page.get("Contents", []))
        except Exception as e:
            raise store_error(e, location, "measuring the index") from e
        return total


def connect(
    data_path: Path, location: IndexLocation | None = None, read_consistency_s: float | None = None
) -> Tables:
    """The index's database under `data_path` (created if needed), or at `location`."""
    import lancedb

    location = location or local_location(data_path)
    interval = None if read_consistency_s is None else timedelta(seconds=read_consistency_s)
    try:
        data_path.mkdir(parents=True, exist_ok=True)
        db = lancedb.connect(
            location.uri,
            read_consistency_interval=interval,
            storage_options=location.storage_options or None,
        )
    except (OSError, RuntimeError, ValueError) as e:
        if location.remote:
            raise store_error(e, location, "opening the index") from e
        raise StoreError(f"cannot open the index at {data_path}: {e}") from e
    return Tables(db, data_path, location)


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # removed by a concurrent cleanup while we walked
                continue
    return total

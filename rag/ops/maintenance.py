"""`rag maintain`: compaction and pruning on the operator's schedule, and erasure.

Every ingest already compacts what it wrote; this is the scheduled pass that also catches an
index nobody writes to (its old versions would otherwise stay forever) and that erases.
Retention is `storage.keep_versions_s`: versions older than that are deleted with the files
only they use. With retention 0 the pass is an erasure: afterwards no file under the data
dir holds a removed document's text, its vectors or its index tokens. That takes more than
LanceDB's optimize, which leaves a deleted row inside its data file unless a good share of
the file is deleted (the row is only masked), and whose indexes keep the tokens of deleted
rows; see `Store.compact(erase=True)` and `_rewrite`.

The schedule is `maintenance.interval_h`: the time of the last successful pass is kept in the
data dir, and a pass that is not due returns at once, so cron or launchd may call
`rag maintain` every few minutes. The pass holds the writer lock; an ingest running then
makes it wait (storage.lock_wait_s). With the index in an object store (storage.uri) the
pass runs the same way through LanceDB, under the bucket's writer lease, and measures the
objects under the index's prefix; run it from one machine (the schedule is kept per data
dir, the lease keeps two passes from overlapping).

Each pass also deletes the kept originals (rag.index.originals) that no document refers to: a
crash's leftovers, or with `storage.keep_originals = false` every one. So after an erasure
no original of a removed document is left either.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import Settings
from rag.errors import StoreError
from rag.index.originals import Originals
from rag.index.schema import chunk_schema
from rag.index.store import open_index
from rag.index.tables import connect

if TYPE_CHECKING:
    from rag.index.store import Store

STATE_FILE = "maintenance.json"


@dataclass(frozen=True, slots=True)
class TableFacts:
    """What one pass changes, measured on disk and in the table's own statistics."""

    table: str
    bytes: int  # every file under the data dir's lancedb/ (all tables)
    versions: int
    fragments: int
    rows: int
    deleted_rows: int  # rows deleted but still inside data files; -1: LanceDB did not say


@dataclass(slots=True)
class MaintenanceReport:
    ran: bool
    reason: str  # "forced", "due", "not due" or "no index"
    keep_versions_s: float
    erase: bool
    last_run_s: float | None = None  # the previous pass, Unix time
    next_due_s: float | None = None  # seconds until the next pass is due; None: only --now
    rewrote: bool = False
    table: str = ""
    bytes_before: int = 0
    bytes_after: int = 0
    versions_before: int = 0
    versions_after: int = 0
    fragments_before: int = 0
    fragments_after: int = 0
    rows: int = 0
    originals_removed: int = 0  # kept originals deleted: no document refers to them
    originals_bytes: int = 0  # what the kept originals take after the pass
    seconds: float = 0.0

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def versions_removed(self) -> int:
        return max(self.versions_before - self.versions_after, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "bytes_reclaimed": self.bytes_reclaimed,
            "versions_removed": self.versions_removed,
        }


def due_in_s(data_path: Path, interval_h: float, now_s: float) -> tuple[float | None, float | None]:
    """(last pass as Unix time or None, seconds until the next is due; <= 0 due, None never)."""
    last = _last_run_s(data_path)
    if interval_h <= 0:
        return last, None
    if last is None or last > now_s:  # never ran, or the clock was set back: run now
        return last, 0.0
    return last, last + interval_h * 3600 - now_s


def run_maintenance(
    settings: Settings, force: bool = False, on_wait: Callable[[str], None] | None = None
) -> MaintenanceReport:
    """Run the pass when it is due (or `force`); report what it reclaimed."""

    data_path = settings.storage.data_path
    keep_s = settings.storage.keep_versions_s
    erase = keep_s == 0
    started = time.monotonic()
    last, due = due_in_s(data_path, settings.maintenance.interval_h, time.time())
    report = MaintenanceReport(False, "not due", keep_s, erase, last, due)
    if not force and (due is None or due > 0):
        return report
    report.reason = "forced" if force else "due"
    if not settings.storage.remote and not data_path.is_dir():
        report.reason = "no index"  # nothing to do, and a cron job must not create the dir
        return report
    store = open_index(
        settings.storage, None, 0, vector_index_rows=settings.retrieval.vector_index_rows
    )
    with store.writer(on_wait):
        before = _facts(store, store.tables.active_name())
        if before is None:
            report.reason = "no index"
        else:
            store.compact(keep_s, erase=erase)
            after = _facts(store, store.tables.active_name()) or before
            if erase and after.deleted_rows != 0:
                _rewrite(store)
                store.compact(0, erase=True)  # drops the old table, prunes the new one
                report.rewrote = True
                after = _facts(store, store.tables.active_name()) or before
            if erase:
                _check_erased(store, after)
            report.table = after.table
            report.bytes_before, report.bytes_after = before.bytes, after.bytes
            report.versions_before, report.versions_after = before.versions, after.versions
            report.fragments_before, report.fragments_after = before.fragments, after.fragments
            report.rows = after.rows
        originals = Originals.from_settings(settings.storage)
        referenced = store.doc_hashes() if originals.keep_new else set()
        report.originals_removed = originals.prune(referenced)
        report.originals_bytes = originals.size_bytes()
        report.ran = True
        now = time.time()
        interval_s = settings.maintenance.interval_h * 3600
        report.next_due_s = interval_s if interval_s > 0 else None
        report.seconds = round(time.monotonic() - started, 3)
        _save_state(data_path, now, report)
    return report


def _rewrite(store: Store) -> None:
    """Copy the live rows into a new table that replaces the active one (Store.build_table).

    Compaction rewrites a data file only when enough of it is deleted, so after a small
    delete the rows are still in the file, masked by a deletion file. A copy of the live
    rows is the one way, with the LanceDB API, to leave them out; the old table is dropped
    whole, with its indexes. The active table serves until the new one is complete.
    """

    stored = store.stored_model()
    if stored is None:
        return
    model, dim = stored
    # The columns build_table writes; rows of an older schema get nulls for the new ones.
    store.build_table(model, dim, store.scan(chunk_schema(model, dim).names))


def _check_erased(store: Store, facts: TableFacts) -> None:
    """Refuse to report an erasure that did not happen: one version, no masked rows, one table."""
    tables = sorted(f"{name}.lance" for name in store.tables.names())
    where = store.location.describe()
    problems = []
    if facts.versions != 1:
        problems.append(f"{facts.versions} versions kept")
    if facts.deleted_rows != 0:
        problems.append(f"{facts.deleted_rows} deleted rows still in data files")
    if tables != [f"{facts.table}.lance"]:
        problems.append(f"tables left: {', '.join(tables)}")
    if problems:
        raise StoreError(
            f"erasure incomplete at {where} ({'; '.join(problems)}); run "
            "`rag maintain --now` again, and `rag doctor` if it persists"
        )


def _facts(store: Store, table_name: str) -> TableFacts | None:
    """The table's size and shape read from a fresh connection (None: no such table)."""
    location = store.location
    if not location.remote and not Path(location.uri).is_dir():
        return None
    table = connect(store.data_path, location).open(table_name)
    if table is None:
        return None
    try:
        versions = table.list_versions()
        latest = max(versions, key=lambda v: v["version"])
        stats = table.stats()
    except (OSError, RuntimeError, ValueError) as e:
        raise StoreError(f"reading the statistics of table {table_name}: {e}") from e
    deleted = latest.get("metadata", {}).get("total_deletion_file_rows")
    return TableFacts(
        table=table_name,
        bytes=store.tables.size_bytes(),
        versions=len(versions),
        fragments=int(stats["fragment_stats"]["num_fragments"]),
        rows=int(stats["num_rows"]),
        deleted_rows=-1 if deleted is None else int(deleted),
    )


def _last_run_s(data_path: Path) -> float | None:
    try:
        value = json.loads((data_path / STATE_FILE).read_text())["last_run_s"]
        return float(value) if math.isfinite(float(value)) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable state: treat as never run, the pass is harmless


def _save_state(data_path: Path, now_s: float, report: MaintenanceReport) -> None:
    """Written whole or not at all (temp file, fsync, rename), so a crash never corrupts it."""
    path = data_path / STATE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        data_path.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump({"last_run_s": now_s, "last": report.to_json()}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise StoreError(f"cannot record the maintenance run in {path}: {e}") from e

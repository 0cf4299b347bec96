"""`rag backup DEST` and `rag restore SRC`: a consistent copy of the index and settings.

Why the backup reads a pinned version instead of holding the writer lock: `rag ingest`
holds the lock for its whole run (hours, for a large corpus), so a locked backup would wait
that long or give up. LanceDB versions are immutable snapshots, so the backup pins the
latest committed version and copies its live rows, whatever the writer commits meanwhile:
never a half-written version. It copies rows through LanceDB rather than files, because
which files a version uses is recorded only in Lance's binary manifest (pylance, not a
dependency, reads it), and a file copy would also carry every older version kept for
storage.keep_versions_s. The copy gets fresh indexes (Store.compact) and one version.

A writer's pruning can delete the files of the pinned version while the copy reads it (a
version older than storage.keep_versions_s, or retention 0): the read then fails and the
backup starts again from the new latest version, a few times at most.

Layout of DEST, written beside it under a temporary name and renamed when complete, so a
crash never leaves a DEST that looks whole:

    backup.json   manifest: rag version, table, table version, model, rows per collection
    data/         a complete data dir: lancedb/<table>.lance, active-table, keys.json,
                  originals/ (the kept original of every document in the copied version)
    config.toml   the config file in use, if there is one

Restore verifies the manifest against the copy, copies data/ beside the target, verifies
again, and renames it into place; it refuses a target that holds anything without --force.

With the index in an object store (storage.uri) the backup reads it there the same way and
DEST is an ordinary local backup. Restore writes a local data dir only: it refuses while
storage.uri is set, since swapping a bucket's prefix whole is not one rename (restore
locally, then re-ingest into the bucket, or use the bucket's own versioning).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag import __version__
from rag.accounts.apikeys import KEYS_FILE
from rag.errors import NotFoundError, RagError, StoreError, UsageError
from rag.index.location import DB_DIR, IndexLocation, local_location
from rag.index.originals import Originals
from rag.index.store import open_store
from rag.index.tables import POINTER_FILE, connect
from rag.index.upkeep import FTS_INDEX, VECTOR_INDEX
from rag.index.writelock import write_lock

FORMAT = 1
MANIFEST = "backup.json"
DATA = "data"
CONFIG_COPY = "config.toml"
_ATTEMPTS = 3
# Rows per batch copied: about 2 KB each with a 384-d vector, so a few MB in memory.
_BATCH_ROWS = 4096
# Files of a data dir that are no part of its content (a fresh dir may hold them already).
_NOT_CONTENT = {"writer.lock"}


def create_backup(
    data_path: Path,
    dest: Path,
    config_path: Path | None,
    on_retry: Callable[[str], None] | None,
    location: IndexLocation | None = None,
) -> dict[str, Any]:
    """Back up the index (under `data_path`, or at `location`) and its settings into `dest`."""

    started = time.monotonic()
    dest = dest.expanduser().absolute()
    source = data_path.expanduser().absolute()
    location = location or local_location(source)
    if location.remote:
        source.mkdir(parents=True, exist_ok=True)  # the keys live here, the index in the bucket
    if not source.is_dir():
        raise NotFoundError(f"no data dir at {source} (storage.data_dir): nothing to back up")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not an empty directory; name a new one")
    if dest == source or source in dest.parents:
        raise UsageError(f"{dest} is inside the data dir {source}; put the backup elsewhere")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / DATA).mkdir(parents=True)
        manifest, hashes = _copy_index_with_retries(source, location, partial / DATA, on_retry)
        manifest.update(_copy_originals(Originals(source), hashes, partial / DATA))
        keys = source / KEYS_FILE
        if keys.is_file():  # replaced whole by rag keys (os.replace): never half a file
            shutil.copy2(keys, partial / DATA / KEYS_FILE)
        if config_path is not None and config_path.is_file():
            shutil.copy2(config_path, partial / CONFIG_COPY)
        manifest.update(
            keys=keys.is_file(),
            config=str(config_path) if config_path is not None and config_path.is_file() else None,
            bytes=_tree_bytes(partial),
            seconds=round(time.monotonic() - started, 3),
        )
        _write_json(partial / MANIFEST, manifest)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.rename(partial, dest)
    except OSError as e:
        raise StoreError(f"writing the backup to {dest}: {e}") from e
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {**manifest, "dest": str(dest)}


def _copy_index_with_retries(
    source: Path, location: IndexLocation, out: Path, on_retry: Callable[[str], None] | None
) -> tuple[dict[str, Any], set[str]]:
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return _copy_index(source, location, out)
        except (OSError, RuntimeError, ValueError) as e:
            # Most likely the pinned version's files were pruned under us: start again.
            if attempt == _ATTEMPTS:
                raise StoreError(
                    f"could not read a consistent version of the index at {location.uri} in "
                    f"{_ATTEMPTS} attempts: {e}"
                ) from e
            if on_retry:
                on_retry(f"the index changed under the backup ({e}); starting again")
            shutil.rmtree(out / DB_DIR, ignore_errors=True)
    raise AssertionError("unreachable")


def _copy_index(
    source: Path, location: IndexLocation, out: Path
) -> tuple[dict[str, Any], set[str]]:
    """Copy the live rows of the active table's latest version; return the manifest and the
    hashes of the copied documents' files."""
    import pyarrow.compute as pc

    tables = open_store(source, None, 0, location=location).tables
    name = tables.active_name()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "rag_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": location.uri if location.remote else str(source),
        "table": name,
        "table_version": 0,
        "embedding_model": None,
        "embedding_dim": 0,
        "rows": 0,
        "collections": {},
        "indexes": [],
    }
    table = tables.open(name)
    hashes: set[str] = set()
    if table is None:
        return manifest, hashes  # nothing ingested yet: keys and config only
    version = int(table.version)
    table.checkout(version)  # pinned: every read below sees this version only
    schema = table.schema
    indexes = sorted(i.name for i in table.list_indices())
    copy = connect(out).create(name, schema)
    counts: dict[str, int] = {}
    for batch in table.search().limit(None).to_batches(_BATCH_ROWS):
        if batch.num_rows:
            copy.add(batch)
            for item in pc.value_counts(batch.column("collection")).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
            hashes.update(pc.unique(batch.column("doc_hash")).to_pylist())
    (out / POINTER_FILE).write_text(name + "\n")
    # Fresh indexes over the copied rows (the vector index if the source had one), one
    # version; nobody else uses this directory.
    copy_store = open_store(out, None, 0, lock_wait_s=0)
    copy_store.vector_index_rows = 1 if VECTOR_INDEX in indexes else 0
    copy_store.compact(0)
    model, dim = _stored_model(schema)
    manifest.update(
        table_version=version,
        embedding_model=model,
        embedding_dim=dim,
        rows=sum(counts.values()),
        collections=dict(sorted(counts.items())),
        indexes=indexes,
    )
    _verify(out, manifest)
    return manifest, hashes


def _copy_originals(originals: Originals, hashes: set[str], out: Path) -> dict[str, int]:
    """Copy the kept originals of `hashes` into the data dir `out`.

    Originals never change once kept (their name is their hash), so a plain copy is
    consistent; one deleted since the version was pinned, or never kept
    (storage.keep_originals = false), is left out and its citations show the passage only.
    """
    copy = Originals(out)
    count = size_bytes = 0
    for doc_hash in sorted(hashes):
        path = originals.path(doc_hash)
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                file_bytes = os.fstat(f.fileno()).st_size
                copy.keep(f, doc_hash, file_bytes)
        except FileNotFoundError:
            continue  # released by a removal while the backup ran
        except StoreError as e:
            raise StoreError(f"copying the kept original {path}: {e}") from e
        count += 1
        size_bytes += file_bytes
    return {"originals": count, "originals_bytes": size_bytes}


def read_manifest(src: Path) -> dict[str, Any]:
    path = src.expanduser() / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise NotFoundError(f"{src} is not a rag backup (no {MANIFEST})") from e
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} is unreadable: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), int):
        raise StoreError(f"{path} is not a rag backup manifest")
    if manifest["format"] > FORMAT:
        raise StoreError(
            f"{src} was made by rag {manifest.get('rag_version', '?')} (backup format "
            f"{manifest['format']}); this rag reads format {FORMAT}: upgrade rag to restore it"
        )
    return manifest


def restore_backup(
    src: Path, data_path: Path, force: bool, lock_wait_s: float, on_wait: Callable[[str], None]
) -> dict[str, Any]:
    """Replace the data dir with the backup's, all at once; refuse to overwrite without force."""

    src = src.expanduser().absolute()
    target = data_path.expanduser().absolute()
    manifest = read_manifest(src)
    _verify(src / DATA, manifest)
    if _has_content(target) and not force:
        raise RagError(
            f"{target} already holds data; add --force to replace it with the backup "
            "(stop `rag serve` and any ingest first)"
        )
    staged = target.with_name(f".{target.name}.restore-{os.getpid()}")
    replaced = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    try:
        shutil.rmtree(staged, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / DATA, staged, symlinks=True)
        _verify(staged, manifest)
        # The writer lock keeps an ingest from committing into the store being replaced.
        lock = write_lock(target, lock_wait_s, on_wait) if target.exists() else None
        with lock or contextlib.nullcontext():
            if target.exists():
                os.rename(target, replaced)
                try:
                    os.rename(staged, target)
                except OSError:
                    os.rename(replaced, target)  # put the old one back
                    raise
            else:
                os.rename(staged, target)
        shutil.rmtree(replaced, ignore_errors=True)
    except OSError as e:
        raise StoreError(f"restoring {src} into {target}: {e}") from e
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    config = src / CONFIG_COPY
    return {
        **manifest,
        "restored_to": str(target),
        "config_copy": str(config) if config.is_file() else None,
    }


def _verify(data: Path, manifest: dict[str, Any]) -> None:
    """Raise StoreError unless the data dir holds what the manifest says, readable."""
    import pyarrow.compute as pc

    name = manifest.get("table")
    rows = manifest.get("rows")
    if not rows:
        return  # an empty index: nothing to open
    problems: list[str] = []
    try:
        pointer = (data / POINTER_FILE).read_text().strip()
        table = connect(data).open(str(name))
        if table is None:
            raise StoreError(f"table {name} is missing")
        counts: dict[str, int] = {}
        column = table.search().select(["collection"]).limit(None).to_arrow()["collection"]
        for item in pc.value_counts(column).to_pylist():
            counts[item["values"]] = item["counts"]
        model = _stored_model(table.schema)
        indexed = {i.name for i in table.list_indices()}
    except (OSError, RuntimeError, ValueError) as e:
        raise StoreError(f"the index copy at {data} is unreadable: {e}") from e
    if pointer != name:
        problems.append(f"active table {pointer!r}, manifest {name!r}")
    if counts != manifest.get("collections"):
        problems.append(f"rows per collection {counts}, manifest {manifest.get('collections')}")
    if model != (manifest.get("embedding_model"), manifest.get("embedding_dim")):
        problems.append(f"embedding model {model}")
    if FTS_INDEX not in indexed or not set(manifest.get("indexes", [])) <= indexed:
        problems.append(f"indexes {sorted(indexed)}, manifest {manifest.get('indexes')}")
    kept = len(Originals(data).hashes())
    if kept != manifest.get("originals", kept):  # older backups name none
        problems.append(f"{kept} kept originals, manifest {manifest.get('originals')}")
    if problems:
        raise StoreError(f"the backup at {data} does not match its manifest: {'; '.join(problems)}")


def _has_content(path: Path) -> bool:
    try:
        return any(p.name not in _NOT_CONTENT for p in path.iterdir())
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


def _stored_model(schema: Any) -> tuple[str | None, int]:
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    return meta.get("embedding_model"), int(meta.get("embedding_dim", "0"))


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())

"""The index's health for `rag doctor`: which model built it, its size, and what is due.

Reads the active LanceDB table directly and read-only (rag.index.store owns every write): the
embedding model recorded in its schema, its versions and fragments, and the rows the
full-text index has not taken in yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.config import Settings
from rag.errors import StoreError
from rag.index.location import index_location
from rag.index.schema import REQUIRED_COLUMNS
from rag.index.store import open_index
from rag.index.upkeep import FTS_INDEX
from rag.ops.check import FAIL, OK, WARN, Check
from rag.ops.modelchecks import configured_embedding

# Beyond these the index is due for `optimize`: each version and fragment costs a file read.
MAX_VERSIONS = 100
MAX_FRAGMENTS = 64
REEMBED_FIX = "set embedding.model back, or run `rag ingest --reembed` to rebuild the index"
REINGEST_FIX = "run `rag ingest` on your documents again: it brings the index up to date"


def inspect_index(settings: Settings, configured: tuple[str, int]) -> list[Check]:
    """Checks of the active table; `configured` is the (model, dim) the config embeds with."""

    location = index_location(settings.storage)
    where = location.describe()
    if not location.remote and not Path(location.uri).is_dir():
        return [Check("index", OK, f"no index yet at {where}; `rag ingest PATH` builds it")]
    try:
        tables = open_index(settings.storage, None, 0).tables
        name = tables.active_name()
        table = tables.open(name)
    except StoreError as e:
        return [Check("index", FAIL, e.message, "fix the [storage] settings or the environment")]
    if table is None:
        return [Check("index", OK, f"no index table yet at {where}")]
    stored = _stored_model(table.schema)
    checks = [_check_model(stored, configured)]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.schema.names]
    if missing:
        checks.append(
            Check(
                "index schema",
                FAIL,
                f"table {name} predates this rag (no {', '.join(missing)} column)",
                "run `rag ingest --reembed` to rebuild it",
            )
        )
    return [*checks, _check_size(table, name), _check_full_text(table)]


def _stored_model(schema: Any) -> tuple[str, int]:
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    try:
        dim = int(meta.get("embedding_dim", "0"))
    except ValueError:
        dim = 0
    return meta.get("embedding_model", "?"), dim


def _check_model(stored: tuple[str, int], configured: tuple[str, int]) -> Check:
    stored_model, stored_dim = stored
    model, dim = configured
    evidence = f"built with {stored_model} ({stored_dim}-d)"
    # An unknown configured dimension (0) cannot be compared; the name still must match.
    if stored_model != model or (dim and stored_dim != dim):
        return Check(
            "index model",
            FAIL,
            f"index {evidence}, but embedding.model gives {model} ({dim or '?'}-d)",
            REEMBED_FIX,
        )
    return Check("index model", OK, f"index {evidence}, as configured")


def _check_size(table: Any, name: str) -> Check:
    versions = len(table.list_versions())
    stats = table.stats()
    fragments = int(stats["fragment_stats"]["num_fragments"])
    small = int(stats["fragment_stats"]["num_small_fragments"])
    evidence = (
        f"table {name}: {int(stats['num_rows']):,} rows, {versions} versions, {fragments} "
        f"fragments ({small} small)"
    )
    if versions > MAX_VERSIONS or fragments > MAX_FRAGMENTS:
        return Check(
            "index size",
            WARN,
            evidence + f": optimize is due (over {MAX_VERSIONS} versions or "
            f"{MAX_FRAGMENTS} fragments)",
            "run `rag maintain --now` (and schedule `rag maintain`); lower "
            "storage.keep_versions_s to keep fewer versions",
        )
    return Check("index size", OK, evidence)


def _check_full_text(table: Any) -> Check:

    rows = int(table.count_rows())
    if rows == 0:
        return Check("full-text index", OK, "the table is empty: nothing to index")
    if FTS_INDEX not in {i.name for i in table.list_indices()}:
        return Check(
            "full-text index",
            FAIL,
            f"no full-text index over {rows:,} rows: keyword search finds nothing",
            REINGEST_FIX,
        )
    unindexed = int(table.index_stats(FTS_INDEX).num_unindexed_rows)
    if unindexed:
        return Check(
            "full-text index",
            WARN,
            f"{unindexed:,} of {rows:,} rows not in the full-text index yet (an ingest was "
            "interrupted): keyword search misses them",
            REINGEST_FIX,
        )
    return Check("full-text index", OK, f"all {rows:,} rows indexed")


def check_index(settings: Settings) -> list[Check]:
    """The index checks against the embedding model the config names."""
    return inspect_index(settings, configured_embedding(settings.embedding))

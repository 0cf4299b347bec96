from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from ingest.reembed import reembed
from ingest.report import Progress
from ingest.run import run_ingest
from rag.config import IngestSettings, Settings
from rag.embed.embedder import Embedder
from rag.errors import StoreError
from rag.index.store import Store, open_store

from .conftest import SAMPLES
from .corpus import write_bad_inputs, write_corpus


def _ingest(paths: list[Path], settings: Settings, embedder: Embedder, store: Store, **kw: Any):
    return run_ingest(
        paths,
        collection=kw.pop("collection", "default"),
        chunking=settings.chunking,
        embedder=embedder,
        store=store,
        **kw,
    )


def _rows(store: Store, version: int | None = None) -> list[dict[str, Any]]:
    table = store.tables.open(store.tables.active_name())
    if version is not None:
        table.checkout(version)
    columns = ["chunk_id", "doc_id", "collection", "text", "page", "heading", "text_hash"]
    return sorted(
        table.search().select(columns).limit(None).to_arrow().to_pylist(),
        key=lambda r: r["chunk_id"],
    )


def test_samples_are_ingested_with_pages_headings_and_progress(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(SAMPLES, docs)
    seen: list[Progress] = []
    report = _ingest([docs], settings, embedder, store, on_progress=seen.append)
    assert (report.added, report.updated, report.unchanged, report.failed) == (4, 0, 0, [])
    assert sorted(Path(p).name for p in report.skipped) == [
        "make_pdf.py",
        "questions.baseline.json",
        "questions.jsonl",
    ]
    assert report.chunks == store.count_chunks("default") > 4
    assert report.pages == 3 + 3  # the PDF's pages, one for each other file
    last = seen[-1]
    assert (last.stage, last.files_done, last.files_total) == ("done", 4, 4)
    assert (last.pages, last.chunks, last.eta_s) == (6, report.chunks, 0.0)
    assert last.chunks_per_s > 0
    assert any(p.stage == "embedding" and p.eta_s is not None for p in seen)

    hits = store.search("default", embedder.embed_query("promote the standby database"), 3)
    assert hits[0].source.endswith("incident-runbook.pdf")
    assert hits[0].page == 3
    hits = store.search("default", embedder.embed_query("paid vacation days per year"), 3)
    assert hits[0].source.endswith("handbook.md")
    assert hits[0].heading == "Kestrel Harbor Systems Employee Handbook > Vacation policy"
    # Every chunk carries its offsets into the document and a hash of its text.
    handbook = (docs / "handbook.md").read_text()
    table = store.tables.open(store.tables.active_name())
    for row in table.search().where("source LIKE '%handbook.md'").limit(None).to_list():
        assert handbook[row["char_start"] : row["char_end"]] == row["text"]
        assert len(row["text_hash"]) == 32


def test_rerun_creates_no_versions_and_keeps_full_text_search_current(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    write_corpus(tmp_path / "docs", count=6)
    first = _ingest([tmp_path / "docs"], settings, embedder, store)
    assert first.added == 6
    version = store.table_version()
    table = store.tables.open(store.tables.active_name())
    stats = table.index_stats("text_idx")
    assert stats.num_indexed_rows == first.chunks and stats.num_unindexed_rows == 0
    for _ in range(2):
        again = _ingest([tmp_path / "docs"], settings, embedder, store)
        assert (again.added, again.updated, again.unchanged, again.chunks) == (0, 0, 6, 0)
        assert store.table_version() == version
    hits = table.search("kx003q", query_type="fts").limit(3).to_list()
    assert hits and "doc03" in hits[0]["source"]


def test_a_changed_file_is_replaced_in_one_commit(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    paths = write_corpus(tmp_path / "docs", count=3)
    _ingest([tmp_path / "docs"], settings, embedder, store)
    doc = paths[0]
    before_version = store.table_version()
    before = _rows(store)
    old = {r["chunk_id"] for r in before if r["heading"].startswith("Doc 0")}
    assert old
    doc.write_text("# Doc 0\n\n## Replaced\n\nThe launch code word is marigold.\n")
    changed = _ingest([tmp_path / "docs"], settings, embedder, store)
    assert (changed.added, changed.updated, changed.unchanged) == (0, 1, 2)
    new = {r["chunk_id"] for r in _rows(store) if r["heading"].startswith("Doc 0")}
    assert new != old and new - old
    # Walk every version the re-ingest made: the document is wholly old or wholly new in each,
    # and the other documents never change.
    others = [r for r in before if not r["heading"].startswith("Doc 0")]
    for version in range(before_version + 1, store.table_version() + 1):
        rows = _rows(store, version)
        mine = {r["chunk_id"] for r in rows if r["heading"].startswith("Doc 0")}
        assert mine in (old, new), f"version {version} holds a half-replaced document"
        assert [r for r in rows if not r["heading"].startswith("Doc 0")] == others
    texts = [h.text for h in store.search("default", embedder.embed_query("code word"), 1)]
    assert "marigold" in texts[0]


def test_sync_removes_documents_whose_files_are_gone_under_the_given_roots(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    paths = write_corpus(tmp_path / "docs", count=4)
    elsewhere = write_corpus(tmp_path / "other", count=1, seed=9)
    _ingest([tmp_path / "docs", *elsewhere], settings, embedder, store)
    paths[1].unlink()
    elsewhere[0].unlink()
    plain = _ingest([tmp_path / "docs"], settings, embedder, store)
    assert (plain.removed, len(store.documents("default"))) == (0, 5)
    synced = _ingest([tmp_path / "docs"], settings, embedder, store, sync=True)
    assert (synced.removed, synced.unchanged) == (1, 3)
    remaining = {
        str(Path(d.path).relative_to(tmp_path)) for d in store.documents("default").values()
    }
    # The deleted file outside the synced root stays until its own root is synced.
    assert remaining == {"docs/doc00.md", "docs/doc02.html", "docs/doc03.pdf", "other/doc00.md"}
    version = store.table_version()
    assert _ingest([tmp_path / "docs"], settings, embedder, store, sync=True).removed == 0
    assert store.table_version() == version


def test_every_kind_of_bad_input_fails_alone_with_its_reason(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    expected = write_bad_inputs(tmp_path / "bad")
    report = _ingest(
        [tmp_path / "bad"], settings, embedder, store, ingest=IngestSettings(parse_timeout_s=20)
    )
    failed = {Path(f["path"]).name: f["reason"] for f in report.failed}
    assert failed == {name: reason for name, reason in expected.items() if reason}
    assert all(f["error"] for f in report.failed)
    stored = {Path(d.path).name for d in store.documents("default").values()}
    assert stored == {name for name, reason in expected.items() if not reason}
    texts = " ".join(r["text"] for r in _rows(store))
    assert "Köln" in texts and "\ufffd(Ende" in texts
    assert "coûte 3 €" in texts and "für den Hafen" in texts


def test_a_file_that_turns_bad_keeps_its_stored_chunks(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    paths = write_corpus(tmp_path / "docs", count=5)
    _ingest([tmp_path / "docs"], settings, embedder, store)
    before = _rows(store)
    pdf = next(p for p in paths if p.suffix == ".pdf")
    pdf.write_bytes(pdf.read_bytes()[:300])
    report = _ingest([tmp_path / "docs"], settings, embedder, store)
    assert [(Path(f["path"]).name, f["reason"]) for f in report.failed] == [(pdf.name, "malformed")]
    assert _rows(store) == before


def test_scanned_pages_are_listed_in_the_report(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    from tests.pdfwrite import write_pdf

    write_pdf(tmp_path / "mixed.pdf", ["Text on the first page.", "", ""])
    write_pdf(tmp_path / "scan.pdf", ["", ""])
    report = _ingest([tmp_path], settings, embedder, store)
    assert report.added == 1
    assert sorted((Path(e["path"]).name, e["pages"]) for e in report.empty_pages) == [
        ("mixed.pdf", [2, 3]),
        ("scan.pdf", [1, 2]),
    ]
    assert [(Path(f["path"]).name, f["reason"]) for f in report.failed] == [("scan.pdf", "no_text")]


def test_collections_keep_corpora_apart(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    a = tmp_path / "a.txt"
    a.write_text("Project Osprey ships in March.")
    _ingest([a], settings, embedder, store, collection="alpha")
    _ingest([a], settings, embedder, store, collection="beta")
    assert store.count_chunks("alpha") == store.count_chunks("beta") == 1
    assert store.search("gamma", embedder.embed_query("Osprey"), 5) == []
    assert store.collections() == ["alpha", "beta"]


def test_another_model_is_refused_until_reembed_rebuilds_the_index(
    settings: Settings, embedder: Embedder, store: Store, tmp_path: Path
) -> None:
    write_corpus(tmp_path / "docs", count=3)
    _ingest([tmp_path / "docs"], settings, embedder, store, collection="alpha")
    _ingest([tmp_path / "docs"], settings, embedder, store, collection="beta")
    before = _rows(store)
    # The same weights under another name: a different model as far as the index knows.
    other = dataclasses.replace(embedder, name="minilm-copy")
    other_store = open_store(settings.storage.data_path, other.name, other.dim)
    with pytest.raises(StoreError, match=r"embedding model all-MiniLM-L6-v2 .*--reembed"):
        _ingest([tmp_path / "docs"], settings, other, other_store)
    old_table = other_store.tables.active_name()

    rebuilt = reembed(other_store, other, settings.chunking)
    assert rebuilt == len(before)
    assert other_store.stored_model() == ("minilm-copy", 384)
    assert other_store.tables.active_name() != old_table
    assert old_table not in other_store.tables.names()
    assert _rows(other_store) == before
    again = _ingest([tmp_path / "docs"], settings, other, other_store, collection="beta")
    assert (again.unchanged, again.chunks) == (3, 0)
    hits = other_store.search("alpha", other.embed_query("harbor crane"), 2)
    assert hits and hits[0].score > 0.2
    # A reader still on the old model is now the one refused.
    with pytest.raises(StoreError, match="minilm-copy"):
        open_store(settings.storage.data_path, embedder.name, embedder.dim).documents("alpha")

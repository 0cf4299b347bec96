from __future__ import annotations

import shutil
from pathlib import Path

from ingest.pipeline import Progress, run_ingest
from rag.config import Settings
from rag.embedder import Embedder
from rag.store import Store, open_store

from .conftest import SAMPLES


def _ingest(paths: list[Path], settings: Settings, embedder: Embedder, store: Store, **kw):
    return run_ingest(
        paths,
        collection=kw.pop("collection", "default"),
        chunking=settings.chunking,
        embedder=embedder,
        store=store,
        **kw,
    )


def _table_version(store: Store) -> int:
    return store._db.open_table("chunks").version


def test_samples_are_ingested_with_pages_and_headings(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(SAMPLES, docs)
    seen: list[Progress] = []
    report = _ingest([docs], settings, embedder, store, on_progress=seen.append)
    assert (report.added, report.updated, report.unchanged, report.failed) == (4, 0, 0, [])
    assert sorted(Path(p).name for p in report.skipped) == ["make_pdf.py", "questions.jsonl"]
    assert report.chunks == store.count_chunks("default") > 4
    assert seen[-1].files_done == seen[-1].files_total == 4

    hits = store.search("default", embedder.embed_query("promote the standby database"), 3)
    assert hits[0].source.endswith("incident-runbook.pdf")
    assert hits[0].page == 3
    hits = store.search("default", embedder.embed_query("paid vacation days per year"), 3)
    assert hits[0].source.endswith("handbook.md")
    assert hits[0].heading == "Kestrel Harbor Systems Employee Handbook > Vacation policy"


def test_reingest_skips_unchanged_files_without_writing(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    doc = tmp_path / "note.md"
    doc.write_text("# Note\nThe launch code word is heliotrope.\n")
    _ingest([doc], settings, embedder, store)
    version = _table_version(store)
    again = _ingest([doc], settings, embedder, store)
    assert (again.added, again.updated, again.unchanged, again.chunks) == (0, 0, 1, 0)
    assert _table_version(store) == version

    doc.write_text("# Note\nThe launch code word is marigold.\n")
    changed = _ingest([doc], settings, embedder, store)
    assert (changed.added, changed.updated) == (0, 1)
    # One commit replaced the document: the stale chunk is gone, no duplicates remain.
    assert _table_version(store) == version + 1
    texts = [h.text for h in store.search("default", embedder.embed_query("code word"), 10)]
    assert len(texts) == 1
    assert "marigold" in texts[0]


def test_one_bad_file_is_reported_and_the_rest_are_ingested(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    (tmp_path / "good.txt").write_text("Kestrels hover over the harbor at dawn.")
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    report = _ingest([tmp_path], settings, embedder, store)
    assert report.added == 1
    failed = {Path(f["path"]).name: f["error"] for f in report.failed}
    assert set(failed) == {"bad.pdf", "empty.md", "binary.txt"}
    assert all(failed.values())
    assert store.count_chunks("default") == 1


def test_collections_keep_corpora_apart(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    a = tmp_path / "a.txt"
    a.write_text("Project Osprey ships in March.")
    _ingest([a], settings, embedder, store, collection="alpha")
    _ingest([a], settings, embedder, store, collection="beta")
    assert store.count_chunks("alpha") == store.count_chunks("beta") == 1
    assert store.search("gamma", embedder.embed_query("Osprey"), 5) == []


def test_reopened_store_with_another_embedding_model_is_refused(
    settings: Settings, embedder: Embedder, store: Store, tmp_path: Path
) -> None:
    (tmp_path / "n.txt").write_text("Something to index.")
    _ingest([tmp_path / "n.txt"], settings, embedder, store)
    other = open_store(settings.storage.data_path, "other-model", embedder.dim)
    try:
        other.documents("default")
    except Exception as e:
        assert "embedding model" in str(e)
    else:
        raise AssertionError("a store built with another embedding model was accepted")

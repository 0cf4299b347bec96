"""What an outside probe threw at `rag ingest` and the CLI: links, special files, text
amplification, unreadable folders, a read-only data dir and control characters in names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.run import run_ingest
from rag.config import IngestSettings, Settings
from rag.embed.embedder import Embedder
from rag.index.store import Store
from tests.pdfwrite import write_form_pdf

from .conftest import RAG, ROOT, rag_env

# Text a real document would not hold; found by full-text search when (wrongly) ingested.
SECRET = "Zanzibarquux outside secret words."
GOOD = "# Harbor notes\n\nThe kestrel crane unloads freight at berth {n}.\n"


def _ingest(paths: list[Path], settings: Settings, embedder: Embedder, store: Store, **kw: Any):
    return run_ingest(
        paths,
        collection="default",
        chunking=settings.chunking,
        embedder=embedder,
        store=store,
        **kw,
    )


def _cli(
    args: list[str], data: Path, cwd: Path, timeout_s: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAG), *args],
        cwd=cwd,
        env=rag_env(data, **env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _good_files(folder: Path, count: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"good{n}.md").write_text(GOOD.format(n=n))


def _amplifying_pdf(path: Path) -> None:
    """A few KB whose every page draws one text form 100 times: megabytes of text."""
    write_form_pdf(path, "Amplified harbor text run. " * 400, draws=100, pages=5)


def _stored_names(store: Store) -> set[str]:
    return {Path(d.path).name for d in store.documents("default").values()}


def _skipped(report: Any) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in report.skipped_reasons}


def _failed(report: Any) -> dict[str, str]:
    return {Path(f["path"]).name: f["reason"] for f in report.failed}


# 1. A symlink loop fails those names alone.
def test_a_symlink_loop_fails_alone(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    docs = tmp_path / "d"
    _good_files(docs, 1)
    (docs / "a.txt").symlink_to("b.txt")
    (docs / "b.txt").symlink_to("a.txt")
    report = _ingest([docs], settings, embedder, store)
    assert report.added == 1
    assert _failed(report) == {"a.txt": "link_loop", "b.txt": "link_loop"}
    assert _stored_names(store) == {"good0.md"}


# 2. A FIFO or a device behind a document's name is never opened for reading.
def test_a_fifo_and_a_device_do_not_hang_the_ingest(tmp_path: Path) -> None:
    docs = tmp_path / "d"
    _good_files(docs, 1)
    os.mkfifo(docs / "pipe.txt")
    (docs / "zero.txt").symlink_to("/dev/zero")
    done = _cli(["ingest", str(docs), "--json"], tmp_path / "data", tmp_path, timeout_s=120)
    report = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr
    assert report["added"] == 1
    failed = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped_reasons"]}
    assert failed == {"pipe.txt": "special_file"}
    assert skipped == {"zero.txt": "link_outside"}


def test_a_device_named_on_the_command_line_is_refused_unread(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    link = tmp_path / "zero.txt"
    link.symlink_to("/dev/zero")
    report = _ingest([link], settings, embedder, store)
    assert _failed(report) == {"zero.txt": "special_file"}


# 3. Text amplification: a per-page and a per-file budget fail that file alone.
def test_an_amplifying_pdf_fails_with_limit_and_the_others_commit(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    docs = tmp_path / "d"
    _good_files(docs, 2)
    _amplifying_pdf(docs / "amp.pdf")
    assert (docs / "amp.pdf").stat().st_size < 8_000
    started = time.monotonic()
    report = _ingest([docs], settings, embedder, store)
    assert time.monotonic() - started < 60
    assert _failed(report) == {"amp.pdf": "limit"}
    assert "ingest.max_text_chars_per_page" in report.failed[0]["error"]
    assert _stored_names(store) == {"good0.md", "good1.md"}


def test_the_chunk_budgets_fail_a_file_alone(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    docs = tmp_path / "d"
    _good_files(docs, 1)
    # Per page allowed, but far more text per byte of file than any real document holds.
    _amplifying_pdf(docs / "amp.pdf")
    long_text = "\n\n".join(
        f"Paragraph {n} about the tide tables of the harbor." for n in range(400)
    )
    (docs / "long.txt").write_text(long_text)
    report = _ingest(
        [docs],
        settings,
        embedder,
        store,
        ingest=IngestSettings(
            max_text_chars_per_page=10**9, max_chunks_per_file=20, max_chunks_per_kib=4
        ),
    )
    failed = {Path(f["path"]).name: f for f in report.failed}
    assert {name: f["reason"] for name, f in failed.items()} == {
        "amp.pdf": "limit",
        "long.txt": "limit",
    }
    assert "ingest.max_chunks_per_kib" in failed["amp.pdf"]["error"]
    assert "ingest.max_chunks_per_file" in failed["long.txt"]["error"]
    assert _stored_names(store) == {"good0.md"}


def test_the_default_budgets_pass_the_samples_and_a_long_manual(
    tmp_path: Path, settings: Settings, embedder: Embedder
) -> None:
    from ingest.budget import TextBudget
    from ingest.chunker import MAX_CHARS_PER_TOKEN, Window, make_chunks
    from ingest.parsers import parse_file

    window = Window.fit(embedder, settings.chunking.chunk_tokens, settings.chunking.overlap_tokens)
    budget = TextBudget(max_chars_per_chunk=window.budget * MAX_CHARS_PER_TOKEN)
    # The octave manual's size: 1,158 dense pages (~3,500 characters each), compressed.
    line = "Set the octave plot limits with axis before calling print on the figure. "
    manual = tmp_path / "manual.pdf"
    write_form_pdf(manual, line * 48, draws=1, pages=1158)
    samples = [p for p in (ROOT / "samples").iterdir() if p.suffix in (".md", ".txt", ".pdf")]
    for path in [*samples, manual]:
        parsed = parse_file(path, 2**30, budget)
        chunks = make_chunks("id", path.name, parsed.sections, embedder, window)
        size = path.stat().st_size
        budget.check_chunks(path.name, len(chunks), size)
        # With room to spare. The real octave.pdf makes 1.2 chunks per KiB and 10,195
        # characters on its densest page; this one, all pages one compressed form, 28.
        assert len(chunks) * 2 <= budget.max_chunks(size)[0], path.name
        assert max(len(s.text) for s in parsed.sections) * 10 <= budget.max_text_chars_per_page
    assert parsed.pages == 1158


# 4. Links: followed only inside the folder, recorded under their own name; --sync forgets
# whatever the folder no longer holds.
def test_links_leaving_the_folder_are_skipped_and_links_inside_keep_their_name(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(SECRET)
    docs = tmp_path / "d"
    _good_files(docs, 1)
    (docs / "leak.md").symlink_to(outside / "secret.md")
    (docs / "leakdir").symlink_to(outside)
    (docs / ".annex").mkdir()
    (docs / ".annex" / "key1").write_text("# Annexed\n\nThe reefer gantry manual.\n")
    (docs / "manual.md").symlink_to(".annex/key1")
    report = _ingest([docs], settings, embedder, store)
    assert report.added == 2
    skipped = _skipped(report)
    assert skipped["leak.md"] == skipped["leakdir"] == "link_outside"
    paths = sorted(d.path for d in store.documents("default").values())
    assert paths == [str(docs.resolve() / "good0.md"), str(docs.resolve() / "manual.md")]
    (docs / "manual.md").unlink()
    synced = _ingest([docs], settings, embedder, store, sync=True)
    assert synced.removed == 1
    assert _stored_names(store) == {"good0.md"}


def test_sync_removes_a_file_that_became_a_link_outside(
    tmp_path: Path, settings: Settings, embedder: Embedder, store: Store
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(SECRET)
    docs = tmp_path / "d"
    _good_files(docs, 2)
    _ingest([docs], settings, embedder, store)
    (docs / "good1.md").unlink()
    (docs / "good1.md").symlink_to(outside / "secret.md")
    synced = _ingest([docs], settings, embedder, store, sync=True)
    assert (synced.removed, synced.added) == (1, 0)
    assert _stored_names(store) == {"good0.md"}


# 5. Nothing is left out silently.
def test_hidden_and_unsupported_entries_are_listed_with_why(tmp_path: Path) -> None:
    docs = tmp_path / "d"
    _good_files(docs, 1)
    (docs / ".hidden.md").write_text("# Hidden\n\nnot ingested\n")
    (docs / ".git").mkdir()
    (docs / ".git" / "config.md").write_text("x")
    (docs / "image.png").write_bytes(b"\x89PNG")
    done = _cli(["ingest", "d", "--json"], tmp_path / "data", tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["skipped"] == ["d/.git", "d/.hidden.md", "d/image.png"]
    assert report["skipped_reasons"] == [
        {"path": "d/.git", "reason": "hidden"},
        {"path": "d/.hidden.md", "reason": "hidden"},
        {"path": "d/image.png", "reason": "unsupported"},
    ]
    human = _cli(["ingest", "d"], tmp_path / "data", tmp_path)
    assert "skipped 3: 2 hidden, 1 unsupported (--json lists them)" in human.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="rag-hostile-"))
    path.chmod(0o755)
    yield path
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    subprocess.run(["rm", "-rf", str(path)], check=True)


def test_an_unreadable_folder_is_listed_as_failed(shared_dir: Path) -> None:
    docs = shared_dir / "d"
    _good_files(docs, 1)
    (docs / "locked").mkdir()
    (docs / "locked" / "inside.md").write_text("x")
    (docs / "locked").chmod(0o000)
    probe = (
        "import json, sys; from pathlib import Path; from ingest.discovery import discover; "
        "found = discover([Path(sys.argv[1])]); "
        "print(json.dumps({'files': [str(e.path) for e in found.files], "
        "'failed': [[str(p), r] for p, r, _ in found.failed]}))"
    )
    command = [sys.executable, "-c", probe, str(docs)]
    if os.geteuid() == 0:  # root reads any folder: look as nobody
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=shared_dir,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert [Path(p).name for p in found["files"]] == ["good0.md"]
    assert [(Path(p).name, r) for p, r in found["failed"]] == [("locked", "unreadable")]


# 6. A data dir the user cannot write is one line, exit 1.
def test_a_read_only_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    docs = tmp_path / "d"
    _good_files(docs, 1)
    if os.geteuid() != 0:
        data = tmp_path / "ro"
        data.mkdir()
        data.chmod(0o555)
    elif Path("/sys/fs").is_dir():
        data = Path("/sys/fs")  # root may write anywhere but in sysfs
    else:
        pytest.skip("no folder that root cannot write")
    done = _cli(["ingest", str(docs)], data, tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert str(data) in lines[0] and "storage.data_dir" in lines[0]


# The acceptance case: everything at once, bounded in time.
def test_a_hostile_folder_finishes_with_the_good_files_committed(tmp_path: Path) -> None:
    docs = tmp_path / "d"
    _good_files(docs, 2)
    (docs / "a.txt").symlink_to("b.txt")
    (docs / "b.txt").symlink_to("a.txt")
    os.mkfifo(docs / "pipe.md")
    _amplifying_pdf(docs / "amp.pdf")
    started = time.monotonic()
    done = _cli(["ingest", "d", "--json"], tmp_path / "data", tmp_path, timeout_s=120)
    assert time.monotonic() - started < 120
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 2
    failed = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert failed == {
        "a.txt": "link_loop",
        "b.txt": "link_loop",
        "pipe.md": "special_file",
        "amp.pdf": "limit",
    }
    listed = _cli(["docs", "list", "--json"], tmp_path / "data", tmp_path)
    names = sorted(Path(d["source"]).name for d in json.loads(listed.stdout)["documents"])
    assert names == ["good0.md", "good1.md"]


# 11. Names from disk reach the terminal escaped; JSON stays exact.
def test_control_characters_in_names_are_escaped_on_the_terminal(tmp_path: Path) -> None:
    docs = tmp_path / "d"
    docs.mkdir()
    name = "evil\nname\u202e\x1b[31m.md"
    (docs / name).write_text("# Quay\n\nThe bollard hawser manifest of the quay.\n")
    data = tmp_path / "data"
    ingested = _cli(["ingest", "d"], data, tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    shown = r"evil\nname\u202e\x1b[31m.md"
    for args in (["docs", "list"], ["search", "bollard hawser quay", "--k", "1"]):
        out = _cli(args, data, tmp_path)
        assert out.returncode == 0, out.stderr
        text = out.stdout + out.stderr
        assert shown in text
        assert "\u202e" not in text and "\x1b" not in text
        assert not any(line.startswith("name") for line in text.splitlines())
    as_json = _cli(["docs", "list", "--json"], data, tmp_path)
    assert json.loads(as_json.stdout)["documents"][0]["source"] == f"d/{name}"
    # A failure names the file escaped too.
    (docs / "bad\u202e.pdf").write_bytes(b"%PDF-1.4 broken")
    failed = _cli(["ingest", "d"], data, tmp_path)
    assert failed.returncode == 1
    assert r"bad\u202e.pdf" in failed.stderr and "\u202e" not in failed.stderr

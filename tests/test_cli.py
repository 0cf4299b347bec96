from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .conftest import FAST_LLM_ENV, RAG, ROOT, rag_env


def _rag(*args: str, data_dir: Path, timeout: float = 300, **env: str):
    return subprocess.run(
        [str(RAG), *args],
        cwd=ROOT,
        env=rag_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_is_instant(tmp_path: Path) -> None:
    _rag("--help", data_dir=tmp_path)  # warm the file cache
    started = time.perf_counter()
    done = _rag("--help", data_dir=tmp_path)
    assert time.perf_counter() - started < 1.0
    assert done.returncode == 0
    for command in ("ingest", "ask", "search", "serve"):
        assert command in done.stdout


def test_ask_cites_the_file_and_page_that_hold_the_answer(sample_data_dir: Path) -> None:
    done = _rag(
        "ask",
        "How quickly must the on-call engineer acknowledge a page?",
        "--json",
        data_dir=sample_data_dir,
        **FAST_LLM_ENV,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) >= {"answer", "citations", "usage"}
    cited = {(c["source"], c["page"]) for c in result["citations"]}
    assert ("samples/incident-runbook.pdf", 2) in cited
    first = result["citations"][0]
    assert set(first) >= {"n", "source", "page", "heading", "chunk_id", "text", "score"}
    assert "within 15 minutes" in first["text"]
    # Grounding: the greedy answer repeats the fact from the cited page.
    assert "15 minutes" in result["answer"]
    usage = result["usage"]
    assert usage["prompt_tokens"] > 50
    assert 0 < usage["completion_tokens"] <= 24
    assert usage["ttft_s"] > 0 and usage["tokens_per_s"] > 0


def test_search_returns_hits_with_citation_fields(sample_data_dir: Path) -> None:
    done = _rag(
        "search", "promote the standby database", "--json", "--k", "2", data_dir=sample_data_dir
    )
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)["hits"]
    assert len(hits) == 2
    assert (hits[0]["source"], hits[0]["page"]) == ("samples/incident-runbook.pdf", 3)


def test_reingest_reports_every_file_unchanged(sample_data_dir: Path) -> None:
    done = _rag("ingest", "samples/", "--json", data_dir=sample_data_dir)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["added"], report["updated"], report["unchanged"]) == (0, 0, 4)


def test_failed_file_sets_exit_code_and_is_named(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.md").write_text("# Ok\nFine text.\n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    done = _rag("ingest", str(docs), "--json", data_dir=tmp_path / "data")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["added"] == 1
    assert [Path(f["path"]).name for f in report["failed"]] == ["broken.pdf"]


def test_bad_input_gets_one_line_errors_and_usage_exit_codes(tmp_path: Path) -> None:
    missing = _rag("ingest", str(tmp_path / "nope"), data_dir=tmp_path)
    assert missing.returncode == 2
    assert f"'{tmp_path / 'nope'}' does not exist" in missing.stderr
    bad_env = _rag("search", "x", data_dir=tmp_path, RAG_RETRIEVAL_K="many")
    assert bad_env.returncode == 2
    assert "retrieval.k = 'many': expected int" in bad_env.stderr
    assert _rag("ask", data_dir=tmp_path).returncode == 2

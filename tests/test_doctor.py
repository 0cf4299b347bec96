"""`rag doctor` run as a subprocess against real data dirs, models and LanceDB tables."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from rag.index.schema import chunk_schema

from .conftest import RAG, ROOT, rag_env


def _doctor(data_dir: Path, **env: str) -> tuple[int, dict[str, Any], dict[str, dict[str, str]]]:
    done = subprocess.run(
        [str(RAG), "doctor", "--json"],
        cwd=ROOT,
        env=rag_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(done.stdout)
    return done.returncode, report, {c["name"]: c for c in report["checks"]}


def test_fresh_install_on_this_machine_passes_with_the_cpu_backend_explained(
    tmp_path: Path,
) -> None:
    code, report, checks = _doctor(tmp_path / "data")
    assert code == 0 and report["ok"], report
    assert set(report["checks"][0]) == {"name", "status", "evidence", "fix"}
    backend = checks["mlx backend"]
    assert backend["status"] in ("ok", "warn")
    assert "Metal absent" in backend["evidence"] and "not a Mac" in backend["evidence"]
    assert checks["packages"]["status"] == "ok" and "lancedb" in checks["packages"]["evidence"]
    assert (
        checks["model fit"]["status"] == "ok" and "max context" in checks["model fit"]["evidence"]
    )
    for name in ("embedding device", "memory", "disk", "embedding model", "llm model", "index"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "no index yet" in checks["index"]["evidence"]
    assert not (tmp_path / "data").exists()  # the doctor only looks
    # No GPU for MLX here: llm.engine = "auto" runs llama.cpp, and says why.
    engine = checks["llm engine"]
    assert engine["status"] == "ok", engine
    assert engine["evidence"].startswith("llamacpp (cpu): auto: no GPU"), engine
    assert (
        "llama-cpp-python" in engine["evidence"] and "one request at a time" in engine["evidence"]
    )


def test_mlx_chosen_on_a_cpu_is_warned_about_with_the_numbers(tmp_path: Path) -> None:
    code, _, checks = _doctor(tmp_path / "data", RAG_LLM_ENGINE="mlx")
    engine = checks["llm engine"]
    assert code == 0 and engine["status"] == "warn", engine
    assert "about 10x slower" in engine["evidence"] and "~290" in engine["evidence"]
    assert engine["fix"] == 'set llm.engine = "auto" (llama.cpp on this machine)'


def test_human_output_is_one_line_per_check_with_fixes(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(RAG), "doctor"],
        cwd=ROOT,
        env=rag_env(tmp_path, RAG_DOCTOR_MIN_FREE_DISK_GB="1000000"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    disk = next(line for line in done.stdout.splitlines() if line.startswith("warn  disk"))
    assert "fix: free space there" in disk


def test_index_built_with_another_embedding_model_fails_with_the_fix(tmp_path: Path) -> None:
    import lancedb

    # The table ingest creates, recording another model in its schema metadata.
    lancedb.connect(tmp_path / "lancedb").create_table(
        "chunks", schema=chunk_schema("some-other-model", 8)
    )
    code, report, checks = _doctor(tmp_path)
    assert code == 1 and not report["ok"]
    model = checks["index model"]
    assert model["status"] == "fail"
    assert "some-other-model (8-d)" in model["evidence"]
    assert "all-MiniLM-L6-v2 (384-d)" in model["evidence"]
    assert "set embedding.model back" in model["fix"] and "rag ingest --reembed" in model["fix"]
    assert (
        checks["index size"]["status"] == "ok" and "1 versions" in checks["index size"]["evidence"]
    )


def test_sample_index_reports_versions_fragments_and_full_text(sample_data_dir: Path) -> None:
    code, report, checks = _doctor(sample_data_dir)
    assert code == 0, report
    assert checks["index model"]["status"] == "ok"
    assert "fragments" in checks["index size"]["evidence"]
    assert checks["full-text index"]["status"] == "ok"
    assert "rows indexed" in checks["full-text index"]["evidence"]


def test_model_over_the_memory_limit_fails_with_the_numbers(tmp_path: Path) -> None:
    code, report, checks = _doctor(tmp_path, RAG_HARDWARE_MEMORY_LIMIT_GB="0.15")
    assert code == 1 and not report["ok"]
    fit = checks["model fit"]
    assert fit["status"] == "fail"
    assert "does not fit" in fit["evidence"] and "hardware.memory_limit_gb" in fit["evidence"]
    assert "MiB" in fit["evidence"] and "weights" in fit["evidence"]
    assert "rag plan" in fit["fix"]


def test_low_disk_simulated_by_configuration_warns(tmp_path: Path) -> None:
    code, report, checks = _doctor(tmp_path, RAG_DOCTOR_MIN_FREE_DISK_GB="1000000")
    assert code == 0 and report["ok"]  # a warning is not a failure
    disk = checks["disk"]
    assert disk["status"] == "warn"
    assert "under doctor.min_free_disk_gb = 1000000.0" in disk["evidence"]
    assert disk["fix"]

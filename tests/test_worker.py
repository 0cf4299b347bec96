"""The parse sandbox: deadlines, memory caps and crashes end one job, never the caller."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ingest.worker import Limits, ParsePool, parse_isolated, run_isolated
from rag.errors import ParseError

from .corpus import write_bomb_pdf

LIMITS = Limits(timeout_s=1.0, memory_bytes=512 * 2**20, max_file_bytes=2**30)


def test_a_job_past_its_deadline_is_killed() -> None:
    started = time.monotonic()
    with pytest.raises(ParseError) as e:
        run_isolated(time.sleep, (60,), LIMITS)
    assert e.value.reason == "timeout"
    assert time.monotonic() - started < 10


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for init to reap it is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_job_past_its_deadline_takes_the_programs_it_started_with_it(tmp_path: Path) -> None:
    # As OCR runs tesseract: a program the job waits for, killed with the job's process group.
    pidfile = tmp_path / "pid"
    command = ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]
    with pytest.raises(ParseError) as e:
        run_isolated(subprocess.run, (command,), LIMITS)
    assert e.value.reason == "timeout"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def test_a_job_past_its_memory_limit_fails_alone() -> None:
    with pytest.raises(ParseError) as e:
        run_isolated(bytearray, (2 * 2**30,), LIMITS)
    assert e.value.reason == "memory"


def test_a_job_that_dies_is_reported_as_a_crash() -> None:
    with pytest.raises(ParseError) as e:
        run_isolated(os.abort, (), LIMITS)
    assert e.value.reason == "crashed"
    assert "signal 6" in e.value.message


def test_a_decompression_bomb_stops_at_the_pdf_limit(tmp_path: Path) -> None:
    write_bomb_pdf(tmp_path / "bomb.pdf")
    started = time.monotonic()
    with pytest.raises(ParseError) as e:
        parse_isolated(tmp_path / "bomb.pdf", Limits(30.0, 1024 * 2**20, 2**30))
    assert e.value.reason == "limit"
    assert time.monotonic() - started < 10


def test_the_pool_keeps_going_after_failures() -> None:
    with ParsePool(2, LIMITS) as pool:
        pool.submit("sleep", time.sleep, (60,), "sleep")
        pool.submit("abort", os.abort, (), "abort")
        pool.submit("ok", sum, ([1, 2, 3],), "sum")
        outcomes = []
        while pool.pending:
            outcomes.extend(pool.collect(None))
    by_key = {o.key: o for o in outcomes}
    assert by_key["ok"].value == 6 and not by_key["ok"].failed
    assert by_key["sleep"].reason == "timeout"
    assert by_key["abort"].reason == "crashed"

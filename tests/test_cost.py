"""Cost accounting: the arithmetic, the ledger, `rag report cost`, and the service recording."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from rag.accounts.cost import cloud_cost, machine_cost_per_s, parse_since, tally
from rag.accounts.usage import UsageLedger, UsageRecord, busy_seconds
from rag.config import CostSettings
from rag.errors import UsageError

from .conftest import RAG, ROOT, rag_env

# A $4,383 machine written off over 36 months costs $0.1667 an hour; at 100 W and
# $0.30/kWh its power costs $0.03 an hour while generating.
MAC = CostSettings(
    hardware_price=4383.0, amortization_months=36, power_w=100, electricity_per_kwh=0.30
)


def test_machine_cost_is_write_off_plus_power() -> None:
    assert machine_cost_per_s(MAC) * 3600 == pytest.approx(0.16667 + 0.03, rel=1e-3)
    assert machine_cost_per_s(CostSettings()) == 0.0
    # 1M prompt tokens at 0.15 and 1M completion tokens at 0.60.
    assert cloud_cost(CostSettings(), 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert busy_seconds(ttft_s=2.0, completion_tokens=30, tokens_per_s=10.0) == 5.0


def test_report_splits_by_key_and_collection() -> None:
    entries = [
        UsageRecord(1.0, "team-a", "handbook", 900, 100, 36.0),
        UsageRecord(2.0, "team-a", "handbook", 900, 100, 36.0),
        UsageRecord(3.0, "team-b", "runbooks", 400, 100, 9.0),
    ]
    report = tally(entries, since_s=0).to_json(MAC)
    a, b = report["by_key"]["team-a"], report["by_key"]["team-b"]
    assert (a["requests"], a["prompt_tokens"], a["completion_tokens"]) == (2, 1800, 200)
    # 72 busy seconds at $0.19667/h, over 2,000 tokens.
    assert a["cost"] == pytest.approx(72 * 0.19667 / 3600, rel=1e-3)
    assert a["cost_per_1k_tokens"] == pytest.approx(a["cost"] / 2, rel=1e-3)
    assert b["cost_per_1k_tokens"] < a["cost_per_1k_tokens"]  # fewer seconds per token
    assert set(report["by_collection"]) == {"handbook", "runbooks"}
    assert report["total"]["requests"] == 3
    assert report["total"]["cloud_cost"] == pytest.approx(cloud_cost(MAC, 2200, 300))


def test_since_accepts_spans_and_dates_and_refuses_the_rest() -> None:
    now = 1_000_000.0
    assert parse_since("12h", now) == now - 12 * 3600
    assert parse_since("2w", now) == now - 14 * 86400
    assert parse_since("2026-11-01") > 0
    assert parse_since(None) == 0.0
    with pytest.raises(UsageError, match="--since 'yesterday'"):
        parse_since("yesterday", now)


def test_ledger_skips_a_line_cut_short_and_filters_by_time(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path)
    ledger.record(UsageRecord(100.0, "k", "c", 10, 5, 1.0))
    ledger.record(UsageRecord(200.0, "k", "c", 10, 5, 1.0))
    with open(next((tmp_path / "usage").glob("*.jsonl")), "a") as f:
        f.write('{"at_s": 300.0, "key": "k"')  # a crash mid-line
    assert [e.at_s for e in ledger.read()] == [100.0, 200.0]
    assert [e.at_s for e in ledger.read(since_s=150.0)] == [200.0]


def test_rag_report_cost_prints_json_and_a_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    UsageLedger(data).record(UsageRecord(time.time(), "team-a", "handbook", 900, 100, 36.0))
    UsageLedger(data).record(UsageRecord(time.time() - 30 * 86400, "old", "x", 1, 1, 1.0))
    env = rag_env(data, RAG_COST_HARDWARE_PRICE="4383", RAG_COST_POWER_W="100")
    env["RAG_COST_ELECTRICITY_PER_KWH"] = "0.30"
    done = subprocess.run(
        [str(RAG), "report", "cost", "--since", "7d", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert list(report["by_key"]) == ["team-a"]  # the 30-day-old request is outside 7d
    assert report["machine_cost_per_hour"] == pytest.approx(0.19667, rel=1e-3)
    table = subprocess.run(
        [str(RAG), "report", "cost"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert table.returncode == 0 and "key team-a" in table.stdout and "key old" in table.stdout
    bad = subprocess.run(
        [str(RAG), "report", "cost", "--since", "soon"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--since 'soon'" in bad.stderr


def test_the_service_records_each_answer_for_the_report(server: str, sample_data_dir: Path) -> None:
    models = httpx.get(f"{server}/v1/models").json()["data"]
    llm = next(m["id"] for m in models if m["id"].startswith("smollm2"))
    reply = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": llm, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    metrics = httpx.get(f"{server}/metrics").text
    assert "rag_cost_total" in metrics
    done = subprocess.run(
        [str(RAG), "report", "cost", "--json"],
        env=rag_env(sample_data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    plain = json.loads(done.stdout)["by_collection"]["(plain LLM)"]
    assert plain["requests"] >= 1 and plain["busy_s"] > 0
    assert plain["completion_tokens"] >= usage["completion_tokens"]

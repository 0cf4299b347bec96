"""What answers cost on this machine, per API key and per collection, against a cloud price.

A request is charged the machine's cost for the seconds it kept the model generating:
hardware written off over `cost.amortization_months` (running day and night) plus the power
it draws while generating. Requests that were generated together in one batch each pay for
their own seconds, so with concurrent traffic the figures are an upper bound. The cloud
figure prices the same prompt and completion tokens at `cost.cloud_*_per_mtok`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rag.accounts.usage import UsageRecord
from rag.config import CostSettings
from rag.errors import UsageError

SECONDS_PER_MONTH = 365.25 / 12 * 86400
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([hdw])$")
_UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400}


def machine_cost_per_s(cost: CostSettings) -> float:
    """The machine's cost per second of generation: write-off plus power."""
    hardware = cost.hardware_price / (cost.amortization_months * SECONDS_PER_MONTH)
    power = cost.power_w / 1000 * cost.electricity_per_kwh / 3600
    return hardware + power


def request_cost(cost: CostSettings, busy_s: float) -> float:
    return busy_s * machine_cost_per_s(cost)


def cloud_cost(cost: CostSettings, prompt_tokens: int, completion_tokens: int) -> float:
    return (
        prompt_tokens * cost.cloud_input_per_mtok + completion_tokens * cost.cloud_output_per_mtok
    ) / 1e6


@dataclass
class Tally:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_s: float = 0.0

    def add(self, entry: UsageRecord) -> None:
        self.requests += 1
        self.prompt_tokens += entry.prompt_tokens
        self.completion_tokens += entry.completion_tokens
        self.busy_s += entry.busy_s

    def to_json(self, cost: CostSettings) -> dict[str, Any]:
        tokens = self.prompt_tokens + self.completion_tokens
        ours = request_cost(cost, self.busy_s)
        cloud = cloud_cost(cost, self.prompt_tokens, self.completion_tokens)
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "busy_s": round(self.busy_s, 3),
            "cost": round(ours, 6),
            "cost_per_1k_tokens": round(ours / tokens * 1000, 6) if tokens else None,
            "cloud_cost": round(cloud, 6),
            "cloud_per_1k_tokens": round(cloud / tokens * 1000, 6) if tokens else None,
        }


@dataclass
class CostReport:
    since_s: float
    total: Tally = field(default_factory=Tally)
    by_key: dict[str, Tally] = field(default_factory=dict)
    by_collection: dict[str, Tally] = field(default_factory=dict)

    def to_json(self, cost: CostSettings) -> dict[str, Any]:
        return {
            "since": datetime.fromtimestamp(self.since_s).isoformat(timespec="seconds")
            if self.since_s
            else None,
            "currency": cost.currency,
            "machine_cost_per_hour": round(machine_cost_per_s(cost) * 3600, 6),
            "total": self.total.to_json(cost),
            "by_key": {k: t.to_json(cost) for k, t in sorted(self.by_key.items())},
            "by_collection": {
                c or "(plain LLM)": t.to_json(cost) for c, t in sorted(self.by_collection.items())
            },
        }


def tally(entries: Iterable[UsageRecord], since_s: float) -> CostReport:
    report = CostReport(since_s=since_s)
    for entry in entries:
        report.total.add(entry)
        report.by_key.setdefault(entry.key, Tally()).add(entry)
        report.by_collection.setdefault(entry.collection, Tally()).add(entry)
    return report


def parse_since(text: str | None, now_s: float | None = None) -> float:
    """`7d`, `12h`, `2w` ago, or an ISO date/time; None or "" = from the beginning."""
    if not text:
        return 0.0
    now_s = time.time() if now_s is None else now_s
    ago = _AGO.match(text.strip())
    if ago:
        return now_s - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(
            f"--since {text!r}: use a span such as 12h, 7d or 2w, or a date such as 2026-11-01"
        ) from None


def render_report(report: dict[str, Any]) -> str:
    """The report as a table for the terminal."""
    currency = report["currency"]
    lines = [
        f"usage since {report['since'] or 'the first request'}; the machine costs "
        f"{report['machine_cost_per_hour']:.4f} {currency} per hour of generation",
        f"{'':24} {'requests':>8} {'tokens':>10} {'busy s':>9} {'cost':>10} "
        f"{'per 1k':>9} {'cloud':>10} {'cloud/1k':>9}",
    ]

    def row(name: str, t: dict[str, Any]) -> str:
        tokens = t["prompt_tokens"] + t["completion_tokens"]
        per_1k = "-" if t["cost_per_1k_tokens"] is None else f"{t['cost_per_1k_tokens']:.5f}"
        cloud_1k = "-" if t["cloud_per_1k_tokens"] is None else f"{t['cloud_per_1k_tokens']:.5f}"
        return (
            f"{name[:24]:24} {t['requests']:>8} {tokens:>10} {t['busy_s']:>9.1f} "
            f"{t['cost']:>10.4f} {per_1k:>9} {t['cloud_cost']:>10.4f} {cloud_1k:>9}"
        )

    lines.append(row("all", report["total"]))
    for title, group in (("key", "by_key"), ("collection", "by_collection")):
        for name, t in report[group].items():
            lines.append(row(f"{title} {name}", t))
    return "\n".join(lines)

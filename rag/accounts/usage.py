"""The usage ledger: one line per answered request, kept in the data dir for cost reports.

Each process appends to a file of its own (`usage/<host>-<pid>.jsonl`), so replicas that
share one data dir never interleave their lines, and a line is written with one `write` of
a whole line in append mode, so a crash leaves at most one partial last line, which readers
skip. Readers merge every file.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rag.errors import StoreError

USAGE_DIR = "usage"


@dataclass(frozen=True, slots=True)
class UsageRecord:
    at_s: float  # Unix time the answer finished
    key: str  # API key name, "anonymous" without keys
    collection: str  # "" for the plain LLM
    prompt_tokens: int
    completion_tokens: int
    busy_s: float  # seconds the request kept the model generating (prefill and decode)
    # The model that answered and how fast (`rag plan` sets them against its predictions);
    # empty and 0 in lines written before they were recorded.
    model: str = ""
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0


class UsageLedger:
    def __init__(self, data_path: Path) -> None:
        self.directory = data_path / USAGE_DIR
        self._path = self.directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self._lock = threading.Lock()

    def record(self, entry: UsageRecord) -> None:
        line = json.dumps(asdict(entry), separators=(",", ":")) + "\n"
        try:
            with self._lock:
                self.directory.mkdir(parents=True, exist_ok=True)
                with open(self._path, "a", encoding="utf-8") as f:
                    f.write(line)
        except OSError as e:
            raise StoreError(f"cannot record usage in {self._path}: {e}") from e

    def read(self, since_s: float = 0.0) -> Iterator[UsageRecord]:
        """Every record at or after `since_s`, from every process's file."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = UsageRecord(**json.loads(line))
                    except (ValueError, TypeError):
                        continue  # a line cut short by a crash
                    if entry.at_s >= since_s:
                        yield entry


def busy_seconds(ttft_s: float, completion_tokens: int, tokens_per_s: float) -> float:
    """Prefill (time to first token) plus decode time, from a request's usage numbers."""
    decode_s = completion_tokens / tokens_per_s if tokens_per_s > 0 else 0.0
    return max(0.0, ttft_s) + decode_s


def recent_speeds(entries: Iterable[UsageRecord], last: int = 20) -> dict[str, dict[str, float]]:
    """Per model, the medians of its last `last` answers: time to first token, prompt tokens,
    prefill tokens/s (prompt tokens over time to first token) and decode tokens/s."""
    by_model: dict[str, list[UsageRecord]] = {}
    for entry in sorted(entries, key=lambda e: e.at_s):
        if entry.model and entry.ttft_s > 0:
            by_model.setdefault(entry.model, []).append(entry)
    speeds = {}
    for model, records in by_model.items():
        recent = records[-last:]
        speeds[model] = {
            "requests": len(recent),
            "prompt_tokens": statistics.median(e.prompt_tokens for e in recent),
            "ttft_s": statistics.median(e.ttft_s for e in recent),
            "prefill_tokens_per_s": statistics.median(e.prompt_tokens / e.ttft_s for e in recent),
            "tokens_per_s": statistics.median(e.tokens_per_s for e in recent),
        }
    return speeds

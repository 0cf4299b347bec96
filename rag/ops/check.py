"""A doctor check's result: ok, warn or fail, with its evidence and its fix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    evidence: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def render_checks(checks: list[Check]) -> str:
    """One line per check: status, name, evidence, and the fix when it is not ok."""
    lines = []
    for c in checks:
        fix = f"  fix: {c.fix}" if c.status != OK and c.fix else ""
        lines.append(f"{c.status:<4}  {c.name:<16}  {c.evidence}{fix}")
    return "\n".join(lines)


def checks_to_json(checks: list[Check]) -> dict[str, Any]:
    return {"checks": [c.to_json() for c in checks], "ok": all(c.status != FAIL for c in checks)}

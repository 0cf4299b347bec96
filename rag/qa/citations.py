"""`[n]` markers in answers: keep the ones that name a source, drop the others.

A marker names source n of the prompt (1-based). Markers may list several sources, as in
`[1, 3]`; a number that names no source is removed, and so is a marker left empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.records import Citation, Passage

# "[1]", "[1, 2]", "[1;2]"; a space before the marker goes with it when it is removed.
MARKER = re.compile(r"( ?)\[(\s*\d{1,4}\s*(?:[,;]\s*\d{1,4}\s*)*)\]")
# The longest text that can still turn into a marker, held back while streaming.
_OPEN_MARKER = re.compile(r"\[[\d\s,;]{0,24}$")


def clean_markers(text: str, sources: int) -> tuple[str, set[int]]:
    """`text` without the markers (or numbers) that name no source, and the sources cited."""
    cited: set[int] = set()

    def keep(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.findall(r"\d+", match.group(2))]
        valid = list(dict.fromkeys(n for n in numbers if 1 <= n <= sources))
        cited.update(valid)
        if not valid:
            return ""
        return match.group(1) + "".join(f"[{n}]" for n in valid)

    return MARKER.sub(keep, text), cited


def citations_for(passages: Sequence[Passage], cited: set[int]) -> list[Citation]:
    """One citation per source of the prompt, numbered as the prompt numbered them."""
    return [
        Citation(
            n,
            p.source,
            p.page,
            p.heading,
            p.chunk_id,
            p.text,
            p.score,
            cited=n in cited,
            chunk_ids=list(p.chunk_ids or (p.chunk_id,)),
            doc_id=p.doc_id,
        )
        for n, p in enumerate(passages, start=1)
    ]


class MarkerFilter:
    """Removes invalid markers from streamed text, holding back what may still become one."""

    def __init__(self, sources: int) -> None:
        self.sources = sources
        self._pending = ""

    def feed(self, text: str) -> str:
        self._pending += text
        out: list[str] = []
        while True:
            start = self._pending.find("[")
            if start < 0:
                # A trailing space may yet precede a marker that is removed with it.
                keep = 1 if self._pending.endswith(" ") else 0
                out.append(self._pending[: len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep :]
                break
            # Hold back a space right before the bracket: it leaves with an invalid marker.
            cut = start - 1 if start > 0 and self._pending[start - 1] == " " else start
            out.append(self._pending[:cut])
            rest = self._pending[cut:]
            close = rest.find("]")
            if close < 0:
                if _OPEN_MARKER.search(rest):
                    self._pending = rest
                    break
                out.append(rest[: start - cut + 1])
                self._pending = rest[start - cut + 1 :]
                continue
            cleaned, _ = clean_markers(rest[: close + 1], self.sources)
            out.append(cleaned)
            self._pending = rest[close + 1 :]
        return "".join(out)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest

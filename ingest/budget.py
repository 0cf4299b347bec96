"""How much text and how many chunks one file may yield before it fails with reason `limit`.

A few KB of PDF can draw one text form a hundred times per page and extract to megabytes;
embedding that would take hours while the writer lock is held. Three caps bound a file's
output: text per PDF page, chunks per file, and chunks per KiB of the file's bytes (the
amplification). The chunk caps are also checked as text in the parse worker: a window never
spans more than `max_chars_per_chunk` characters, so text past `chunks * max_chars_per_chunk`
can only make more chunks than allowed, and that file fails before it leaves the sandbox.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rag.errors import ParseError

# The defaults of the ingest.max_* settings (config.toml); see there.
MAX_TEXT_CHARS_PER_PAGE = 100_000
MAX_CHUNKS_PER_FILE = 50_000
MAX_CHUNKS_PER_KIB = 64


@dataclass(frozen=True, slots=True)
class TextBudget:
    max_text_chars_per_page: int = MAX_TEXT_CHARS_PER_PAGE
    max_chunks_per_file: int = MAX_CHUNKS_PER_FILE
    max_chunks_per_kib: int = MAX_CHUNKS_PER_KIB
    # The most characters one chunk can span (chunk tokens x chunker.MAX_CHARS_PER_TOKEN).
    max_chars_per_chunk: int = 256 * 12

    def max_chunks(self, size_bytes: int) -> tuple[int, str]:
        """Chunks a file of `size_bytes` may make, and the setting that decides it."""
        # Every file may count as at least one KiB: a short note makes a chunk or two.
        by_size = self.max_chunks_per_kib * max(1, math.ceil(size_bytes / 1024))
        if by_size < self.max_chunks_per_file:
            return by_size, "ingest.max_chunks_per_kib"
        return self.max_chunks_per_file, "ingest.max_chunks_per_file"

    def check_chunks(self, name: str, count: int, size_bytes: int) -> None:
        allowed, setting = self.max_chunks(size_bytes)
        if count > allowed:
            raise ParseError(
                f"{name}: more than {allowed} chunks from {size_bytes} bytes ({setting})", "limit"
            )

    def check_page(self, name: str, page: int, chars: int) -> None:
        if chars > self.max_text_chars_per_page:
            raise ParseError(
                f"{name}: page {page} holds over {self.max_text_chars_per_page} characters of "
                "text (ingest.max_text_chars_per_page)",
                "limit",
            )

    def check_text(self, name: str, chars: int, size_bytes: int) -> None:
        allowed, setting = self.max_chunks(size_bytes)
        if chars > allowed * self.max_chars_per_chunk:
            raise ParseError(
                f"{name}: {chars} characters of text from {size_bytes} bytes make more than "
                f"{allowed} chunks ({setting})",
                "limit",
            )

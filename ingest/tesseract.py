"""Tesseract, the OCR engine for scanned PDF pages: where it is, its languages, one image read.

Tesseract is a program, not a Python package: Debian/Ubuntu `apt-get install tesseract-ocr`
(English data comes with it; other languages are `tesseract-ocr-<lang>` packages), macOS
`brew install tesseract tesseract-lang`. `rag doctor` checks it; ingest says per file when a
scan could not be read for want of it. It was chosen over RapidOCR (ONNX models inside the
wheel) by `python bench/ocr.py`: the README's "Scanned PDFs and tables" has the numbers.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

from rag.errors import ParseError

_MAC = platform.system() == "Darwin"
INSTALL_HINT = "brew install tesseract" if _MAC else "apt-get install tesseract-ocr"
# Seconds `tesseract --list-langs` may take: it only lists files.
LIST_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Tesseract:
    path: str
    version: str
    languages: tuple[str, ...]

    def missing(self, wanted: str) -> list[str]:
        """The languages of `wanted` ("eng+deu") that have no data installed."""
        return [lang for lang in wanted.split("+") if lang and lang not in self.languages]


def find_tesseract() -> Tesseract | None:
    """The tesseract on PATH with its version and installed languages, or None."""
    path = shutil.which("tesseract")
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, "--list-langs"], capture_output=True, text=True, timeout=LIST_TIMEOUT_S
        )
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=LIST_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    # The first line is a header ("List of available languages in ...").
    languages = tuple(line.strip() for line in done.stdout.splitlines()[1:] if line.strip())
    first = (version.stdout or version.stderr).splitlines()
    return Tesseract(path, first[0].strip() if first else "tesseract", languages)


def problem(found: Tesseract | None, languages: str) -> tuple[str, str]:
    """What keeps OCR in `languages` from running here, and its fix; ("", "") when nothing."""
    if found is None:
        return "tesseract is not installed", INSTALL_HINT
    missing = found.missing(languages)
    if not missing:
        return "", ""
    installed = ", ".join(found.languages) or "none"
    what = f"tesseract has no data for {', '.join(missing)} (installed: {installed})"
    if _MAC:
        return what, "brew install tesseract-lang"
    return what, "apt-get install " + " ".join(f"tesseract-ocr-{m}" for m in missing)


def unavailable_reason(found: Tesseract | None, languages: str) -> str:
    """Why OCR in `languages` cannot run here, with its fix; "" when it can."""
    what, fix = problem(found, languages)
    return f"{what} ({fix})" if what else ""


def read_image(
    path: str, image: bytes, languages: str, dpi: int, timeout_s: float, name: str
) -> str:
    """The text Tesseract reads in `image` (any format it reads; PGM is cheapest to make).

    Runs as a child process: it inherits the parse process's limits and process group, so
    the parse worker's deadline stops it too. Failures raise ParseError naming `name`.
    """
    # One thread: OpenMP threads fight the embedder and the other parse workers for cores
    # (2.1 s instead of 5.6 s for one A4 page on a shared 2-core machine).
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    command = [path, "stdin", "stdout", "-l", languages, "--dpi", str(dpi), "--psm", "3"]
    try:
        done = subprocess.run(
            command, input=image, capture_output=True, timeout=max(timeout_s, 0.1), env=env
        )
    except subprocess.TimeoutExpired as e:
        raise ParseError(f"{name}: OCR took over {timeout_s:.1f}s", "timeout") from e
    except OSError as e:
        raise ParseError(f"{name}: tesseract could not start ({e})", "ocr") from e
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"exit code {done.returncode}"
        if done.returncode < 0:
            why = f"tesseract died (signal {-done.returncode})"
        raise ParseError(f"{name}: OCR failed: {why}", "ocr")
    return done.stdout.decode(errors="replace").replace("\f", "")

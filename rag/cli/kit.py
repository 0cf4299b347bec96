"""What every `rag` command shares: settings from the config, one-line errors, JSON out."""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from rag.config import Settings, load_settings
from rag.errors import RagError


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a RagError as one line and exit with its code (1 domain error, 2 usage/config)."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RagError as e:
            click.echo(f"error: {printable(e.message)}", err=True)
            sys.exit(e.exit_code)

    return run


def cli_settings(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj.get("config_path"))
    except RagError as e:
        click.echo(f"error: {printable(e.message)}", err=True)
        sys.exit(e.exit_code)


def printable(text: str, keep: str = "") -> str:
    """`text` safe for a terminal: control, bidi and other invisible characters escaped.

    File names and document text come from anywhere: a newline in a name forges an output
    line, an ESC starts a terminal command, U+202E reverses what follows. Each such
    character is shown as its Python escape (\\n, \\x1b, \\u202e); `keep` lists the ones to
    pass through (newlines in an answer). Every stored or user-given string goes through
    here on its way to the terminal; JSON output is escaped by json.dumps instead.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c in keep or c.isprintable() or unicodedata.category(c) == "Zs" else ascii(c)[1:-1]
        for c in text
    )


def page_ranges(pages: list[int]) -> str:
    """1-based page numbers for people, runs folded: [1, 2, 3, 7] -> "1-3, 7"."""
    runs: list[list[int]] = []
    for page in sorted(pages):
        if runs and page == runs[-1][1] + 1:
            runs[-1][1] = page
        else:
            runs.append([page, page])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def say(message: str) -> None:
    click.echo(printable(message), err=True)

"""What every `rag` command shares: settings from the config, one-line errors, JSON out."""

from __future__ import annotations

import json
import sys
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
            click.echo(f"error: {e.message}", err=True)
            sys.exit(e.exit_code)

    return run


def cli_settings(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj.get("config_path"))
    except RagError as e:
        click.echo(f"error: {e.message}", err=True)
        sys.exit(e.exit_code)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def say(message: str) -> None:
    click.echo(message, err=True)

"""How the CLI shows results: tables for people, JSON for scripts, progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate  # imported here: JSON output and scripts don't pay for it

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def is_terminal() -> bool:
    return sys.stdout.isatty()


def progress(message: str) -> None:
    """A progress line on stderr, only when stderr is a terminal."""
    if sys.stderr.isatty():
        click.echo(message, err=True)

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


class HostCounter:
    """``probing 3/16 hosts (last: gpu7)`` redrawn in place on stderr, only on a terminal, and
    erased when done, so the table that follows stands alone. Safe to call from threads."""

    def __init__(self, verb: str, total: int) -> None:
        import threading

        self.verb, self.total, self.done = verb, total, 0
        self.live = sys.stderr.isatty() and total > 0
        self._lock = threading.Lock()

    def __call__(self, result: Any) -> None:
        with self._lock:
            self.done += 1
            if self.live:
                sys.stderr.write(f"\r\x1b[K{self.verb} {self.done}/{self.total} hosts (last: {result.host.name})")
                sys.stderr.flush()

    def __enter__(self) -> HostCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

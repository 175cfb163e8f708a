"""Labelled Docker volumes as records kept on a host, with no server: the line's tickets
(:mod:`forge.env.queue`) and the idle marks (:mod:`forge.env.idle`). Created, listed one JSON
value per column (a label holding a tab or a newline cannot forge a second record), removed.
Anyone who can run docker on the host can make such volumes: the callers check every row."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence

from forge.session import HostSession


def list_format(labels: Sequence[str]) -> str:
    """``docker volume ls --format``: the name, then each label, JSON-encoded."""
    return "\t".join(["{{json .Name}}", *(f'{{{{json (.Label "{label}")}}}}' for label in labels)])


def rows(stdout: str, labels: Sequence[str]) -> Iterator[list[str]]:
    """The well-formed lines of a listing in :func:`list_format`: name and label values, all
    strings; any other line is left out."""
    for line in stdout.splitlines():
        try:
            cols = [json.loads(c) for c in line.split("\t")]
        except ValueError:
            continue
        if len(cols) == 1 + len(labels) and all(isinstance(c, str) for c in cols):
            yield cols


def create(s: HostSession, name: str, labels: Mapping[str, str]) -> None:
    args = [x for label, value in labels.items() for x in ("--label", f"{label}={value}")]
    s.run(s.docker("volume", "create", *args, name), timeout=60, check=True)


def remove(s: HostSession, names: Sequence[str]) -> None:
    """Remove volumes (one already gone is fine: ``-f``)."""
    if names:
        s.run(s.docker("volume", "rm", "-f", *names), timeout=60)

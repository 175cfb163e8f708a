"""The views of `forge gpus` that fit a screen: one line per host, or per user, and how a
frame is drawn in place for ``--watch``.

Everything a host sent is cleaned (:func:`forge.cli.output.clean`) before it is coloured, so a
colour is always forge's own escape sequence, never one from a host. Colour only on a
terminal, and not with ``NO_COLOR`` set.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

import click

from forge.cli import output
from forge.cli.signals import SignalFlag
from forge.gpu.holders import holders_of
from forge.gpu.model import Gpu
from forge.gpu.survey import HostReport

VIEWS = ("gpu", "host", "user")

HOST_HEADERS = ["HOST", "FREE", "MODEL", "MEMORY", "UTIL", "HOLDERS"]
USER_HEADERS = ["USER", "GPUS", "WHERE", "MEMORY", "UTIL"]


def use_colour(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR")


class Paint:
    """Cleans a host's text and colours it when colour is on."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, **style: Any) -> str:
        text = output.clean(text, one_line=True)
        return click.style(text, **style) if self.colour and style else text


def _gib(mib: int) -> str:
    return f"{mib / 1024:.0f}"


def bar(pct: float, width: int = 10, *, unicode: bool = True) -> str:
    """A utilization bar: ``█████░░░░░`` (``#####.....`` where the terminal is not UTF-8)."""
    full = max(0, min(width, round(pct / 100 * width)))
    on, off = ("█", "░") if unicode else ("#", ".")
    return on * full + off * (width - full)


def _utf8() -> bool:
    return (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "") == "utf8"


def host_rows(reports: list[HostReport], paint: Paint) -> list[list[str]]:
    """One line per host: free/total GPUs, model(s), memory, mean utilization with a bar,
    and who holds the busy GPUs (GPUs per holder)."""
    rows = []
    for rep in reports:
        name = paint(rep.host.name, bold=True)
        if rep.gpus is None:
            rows.append([name, paint("-", fg="red"), "", "", "", paint(f"unreachable: {rep.error}", fg="red")])
            continue
        if not rep.gpus.ok:
            label = "no GPUs" if rep.gpus.status in ("no_gpus", "not_installed") else "GPU error"
            rows.append([name, paint("-", fg="yellow"), "", "", "", paint(f"{label}: {rep.gpus.reason}", fg="yellow")])
            continue
        gpus = [v.gpu for v in rep.verdicts]
        free = sum(v.free for v in rep.verdicts)
        held: Counter[str] = Counter(str(h) for v in rep.verdicts for h in holders_of(v))
        rows.append(
            [
                name,
                paint(f"{free}/{len(gpus)}", fg="green" if free else "red", bold=True),
                paint(_models(gpus)),
                _memory(gpus),
                _util(gpus, paint),
                paint(", ".join(f"{who} ×{n}" if n > 1 else who for who, n in sorted(held.items())) or "-"),
            ]
        )
    return rows


def _models(gpus: list[Gpu]) -> str:
    models = Counter(g.name or "?" for g in gpus)
    if len(models) == 1:
        return next(iter(models))
    return ", ".join(f"{m} ×{n}" for m, n in models.most_common())


def _memory(gpus: list[Gpu]) -> str:
    used = sum(g.memory_used_mib or 0 for g in gpus)
    total = sum(g.memory_total_mib or 0 for g in gpus)
    return f"{_gib(used)} / {_gib(total)} GiB"


def _util(gpus: list[Gpu], paint: Paint) -> str:
    known = [g.utilization_gpu_pct for g in gpus if g.utilization_gpu_pct is not None]
    if not known:
        return "n/a"
    pct = sum(known) / len(known)
    colour = "red" if pct >= 80 else "yellow" if pct >= 30 else "green"
    return paint(bar(pct, unicode=_utf8()), fg=colour) + f" {pct:3.0f} %"


def user_rows(reports: list[HostReport], paint: Paint) -> list[list[str]]:
    """One line per holder (a user, or a user's environment): how many GPUs, where, their
    memory and mean utilization; most GPUs first."""
    where: dict[str, list[str]] = defaultdict(list)
    gpus: dict[str, list[Gpu]] = defaultdict(list)
    for rep in reports:
        for v in rep.verdicts:
            for h in holders_of(v):
                where[str(h)].append(f"{rep.host.name}:{v.gpu.label}")
                gpus[str(h)].append(v.gpu)
    order = sorted(where, key=lambda k: (-len(where[k]), k))
    return [
        [
            paint(who, bold=True),
            str(len(where[who])),
            paint(_places(where[who])),
            _memory(gpus[who]),
            _util(gpus[who], paint),
        ]
        for who in order
    ]


def _places(places: list[str]) -> str:
    """["gpu1:0", "gpu1:1", "gpu2:3"] -> "gpu1:0,1 gpu2:3"."""
    by_host: dict[str, list[str]] = defaultdict(list)
    for p in places:
        host, _, index = p.rpartition(":")
        by_host[host].append(index)
    return " ".join(f"{h}:{','.join(i)}" for h, i in by_host.items())


def fits(gpu_rows: int, height: int) -> bool:
    """Whether one row per GPU fits a screen of ``height`` lines (with the header lines, the
    summary and the watch line)."""
    return gpu_rows + 6 <= height


def terminal_size() -> tuple[int, int]:
    import shutil  # a terminal only: not for --json or a pipe

    size = shutil.get_terminal_size((100, 40))
    return size.columns, size.lines


class Screen:
    """``--watch`` on a terminal: frames drawn in place on the alternate screen (as ``top``
    and ``watch`` do), one write per frame, each line cleared to its end and the rest of the
    screen below the frame cleared: no flicker. A resize (SIGWINCH) wakes the loop to lay the
    last frame out again for the new size (a flag its handler sets without a lock: see
    forge/cli/signals.py). Leaving restores the screen and the cursor."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.resized = SignalFlag()
        self._old: Any = None

    def __enter__(self) -> Screen:
        self.out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden
        self.out.flush()
        self._old = signal.signal(signal.SIGWINCH, self._on_resize)
        return self

    def _on_resize(self, signum: int, frame: FrameType | None) -> None:
        self.resized.set()

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGWINCH, self._old)
        self.resized.close()
        self.out.write("\x1b[?25h\x1b[?1049l")
        self.out.flush()

    def draw(self, render: Callable[[int, int], str]) -> None:
        """Draw ``render(columns, lines)``, cut to the screen."""
        self.resized.clear()
        columns, lines = terminal_size()
        text = render(columns, lines)
        rows = [_cut(row, columns) for row in text.split("\n")[:lines]]
        self.out.write("\x1b[H" + "\x1b[K\n".join(rows) + "\x1b[K\x1b[J")
        self.out.flush()


def _cut(row: str, columns: int) -> str:
    """``row`` cut to ``columns`` visible characters (colour codes take none), colour reset."""
    plain = click.unstyle(row)
    if len(plain) <= columns:
        return row
    if plain == row:
        return row[:columns]
    out, seen, i = [], 0, 0
    while i < len(row) and seen < columns:
        if row[i] == "\x1b":
            end = row.find("m", i)
            out.append(row[i : end + 1])
            i = end + 1
            continue
        out.append(row[i])
        seen += 1
        i += 1
    return "".join(out) + "\x1b[0m"

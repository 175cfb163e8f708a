"""A progress display on stderr for byte transfers: one line per host and a total line."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _eta(left: float, rate: float) -> str:
    if rate <= 0 or left <= 0:
        return "--"
    s = int(left / rate)
    return f"{s // 60}:{s % 60:02d}"


@dataclass
class _Bar:
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    note: str = ""


class TerminalProgress:
    """Redraws at most every ``interval_s``; bytes, rate and ETA per host and in total."""

    def __init__(self, stream: TextIO, *, interval_s: float = 0.2, width: int = 24) -> None:
        self._out = stream
        self._bars: dict[str, _Bar] = {}
        self._lock = threading.Lock()
        self._interval = interval_s
        self._width = width
        self._last = 0.0
        self._drawn = 0

    def note(self, message: str) -> None:
        pass  # the bars say where the transfer is

    def start(self, key: str, total_bytes: int | None) -> None:
        with self._lock:
            self._bars[key] = _Bar(total_bytes)
            self._draw(force=True)

    def advance(self, key: str, nbytes: int) -> None:
        with self._lock:
            bar = self._bars.get(key)
            if bar is not None:
                bar.done += nbytes
            self._draw()

    def finish(self, key: str, ok: bool, note: str = "") -> None:
        with self._lock:
            bar = self._bars.get(key)
            if bar is not None:
                bar.ended = time.monotonic()
                bar.note = "done" if ok else "FAILED"
                if ok and bar.total:
                    bar.total = max(bar.total, bar.done)
                    bar.done = bar.total
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            self._draw(force=True)
            self._drawn = 0

    def _line(self, name: str, done: int, total: int | None, elapsed: float, note: str) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        if total:
            frac = min(done / total, 1.0 if note else 0.99)
            fill = int(frac * self._width)
            bar = "[" + "#" * fill + " " * (self._width - fill) + "]"
            size = f"{human_bytes(done)}/{human_bytes(total)}"
            left = max(total - done, 0)
        else:
            bar, size, left = "", human_bytes(done), 0
        tail = note or f"ETA {_eta(left, rate)}"
        return f"{name:<10} {bar} {size:>20} {human_bytes(rate)}/s {tail}"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        lines = []
        for name, b in self._bars.items():
            lines.append(self._line(name, b.done, b.total, (b.ended or now) - b.started, b.note))
        if len(self._bars) > 1:
            started = min(b.started for b in self._bars.values())
            done = sum(b.done for b in self._bars.values())
            totals = [b.total for b in self._bars.values()]
            total = sum(t for t in totals if t) if all(totals) else None
            finished = all(b.ended for b in self._bars.values())
            lines.append(self._line("total", done, total, now - started, "done" if finished else ""))
        text = ""
        if self._drawn:
            text += f"\x1b[{self._drawn}F"
        text += "".join(f"\x1b[2K{line}\n" for line in lines)
        self._out.write(text)
        self._out.flush()
        self._drawn = len(lines)

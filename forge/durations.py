"""Durations as people write them: ``90s``, ``5m``, ``48h``, ``7d``, ``2w``, ``1y``, ``1h30m``."""

from __future__ import annotations

import re

#: Seconds per unit (a year is 365 days).
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdwy])")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; :class:`ValueError` with the accepted forms when it is not one."""
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (write e.g. 90s, 5m, 48h, 7d, 2w, 1y or 1h30m)")
    return sum(float(n) * UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The largest whole units of ``seconds``, e.g. ``2d 3h``, ``45m``, ``12s``."""
    left = int(round(seconds))
    if left <= 0:
        return "0s"
    out = []
    for unit in ("y", "w", "d", "h", "m", "s"):
        n, left = divmod(left, UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
        if len(out) == 2:
            break
    return " ".join(out)

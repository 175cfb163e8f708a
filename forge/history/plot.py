"""A picture of the fleet over time (``forge report --plot FILE``): how many GPUs were seen,
held, working and free, step by step. Drawn with matplotlib (the ``plot`` extra), imported
only here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from forge.history.report import Point
from forge.history.store import HistoryError

FORMATS = (".svg", ".png")


def draw(points: Sequence[Point], path: Path, *, title: str) -> None:
    """Write the picture to ``path`` (SVG or PNG, by its suffix)."""
    if path.suffix.lower() not in FORMATS:
        raise HistoryError(f"cannot draw {path.name}: the file must end in .svg or .png")
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise HistoryError("--plot needs matplotlib", hint="pip install 'forge-fleet[plot]'") from None
    times: Any = [datetime.fromtimestamp(p.t) for p in points]  # matplotlib takes datetimes
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    try:
        ax.plot(times, [p.observed for p in points], color="#888888", linewidth=1, label="seen")
        ax.fill_between(times, [p.held for p in points], step="post", alpha=0.35, color="#d62728", label="held")
        ax.plot(times, [p.worked for p in points], drawstyle="steps-post", color="#d62728", label="working")
        ax.plot(times, [p.free for p in points], drawstyle="steps-post", color="#2ca02c", label="free")
        ax.set_ylabel("GPUs (average over each step)")
        ax.set_title(title)
        ax.set_ylim(0, max((p.observed for p in points), default=1) * 1.2 or 1)  # room for the legend
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", ncols=4, fontsize="small")
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(mdates.AutoDateLocator()))
        fig.tight_layout()
        fig.savefig(path, format=path.suffix.lower().lstrip("."))
    except OSError as e:
        raise HistoryError(f"cannot write {path}: {e.strerror}") from e
    finally:
        plt.close(fig)

"""Reading the history: usage per user, environment, host or hour of the day, and the fleet
over time. Every query reads the coarsest tier that covers each part of the period (whole
days from the day sums, whole hours from the hour sums, the edges from the samples).

Definitions (also in docs/history.md), all in GPU-hours over the period:

- **observed**: time forge saw the GPU (sampled, within ``max_gap`` of the sample before);
- **held**: time a user (or their environment) held it: its processes ran on it, or it was
  given to their forge environment; a GPU held by several counts a share for each;
- **worked**: held time weighted by the GPU's utilization (1 hour at 50 % is 0.5 h worked);
- **idle**: held time while its utilization was below ``idle_utilization_pct``;
- **free**: time it was free by the host's policy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from forge.history.store import DAY, HOUR, SAMPLE, SPAN, History

GROUPS = ("user", "env", "host", "hour")


@dataclass(frozen=True)
class Usage:
    """One row of a report: GPU-hours by kind for one key (user; user and env; host; hour)."""

    key: tuple[str, ...]
    observed_h: float
    held_h: float
    worked_h: float
    idle_h: float
    free_h: float
    energy_kwh: float | None  # None where no power was reported
    gpus: int  # distinct GPUs seen

    @property
    def worked_pct(self) -> float | None:
        """How much of the held time the GPUs worked."""
        return None if not self.held_h else 100 * self.worked_h / self.held_h

    @property
    def free_pct(self) -> float | None:
        return None if not self.observed_h else 100 * self.free_h / self.observed_h

    @property
    def free_gpus(self) -> float:
        """How many of its GPUs were free on average."""
        return 0.0 if not self.observed_h else self.gpus * self.free_h / self.observed_h


@dataclass(frozen=True)
class Point:
    """The fleet over one step of time: how many GPUs, on average, were seen, held, working
    (utilization-weighted) and free."""

    t: int
    observed: float
    held: float
    worked: float
    free: float


@dataclass(frozen=True)
class Report:
    since: int
    until: int
    by: str
    rows: list[Usage]
    total: Usage
    usually_free_hosts: list[Usage] = field(default_factory=list)
    usually_free_hours: list[Usage] = field(default_factory=list)


def segments(since: int, until: int, *, rolled_hour: int, rolled_day: int) -> list[tuple[int, int, int]]:
    """``[since, until)`` cut into ``(tier, start, end)`` pieces: whole summed days from the
    day tier, whole summed hours from the hour tier, the rest from the samples."""
    out: list[tuple[int, int, int]] = []
    a = since
    while a < until:
        if a % SPAN[DAY] == 0 and a + SPAN[DAY] <= min(until, rolled_day):
            tier, b = DAY, a + SPAN[DAY]
        elif a % SPAN[HOUR] == 0 and a + SPAN[HOUR] <= min(until, rolled_hour):
            tier, b = HOUR, a + SPAN[HOUR]
        else:
            tier, b = SAMPLE, min(until, (a // SPAN[HOUR] + 1) * SPAN[HOUR])
        if out and out[-1][0] == tier and out[-1][2] == a:
            out[-1] = (tier, out[-1][1], b)
        else:
            out.append((tier, a, b))
        a = b
    return out


class Reader:
    """Queries over one history."""

    def __init__(self, history: History, *, now: float | None = None) -> None:
        self.h = history
        self.now = int(time.time() if now is None else now)

    def period(self, since_s: float, until: int | None = None) -> tuple[int, int]:
        """The period ending ``until`` (default now) that is ``since_s`` long, its start moved
        back to a whole hour (day) where the samples (hour sums) are no longer kept."""
        until = self.now + 1 if until is None else until  # samples taken this very second too
        since = int(until - since_s)
        r = self.h.retention
        if since < self.now - r.keep_hours:
            since = since // SPAN[DAY] * SPAN[DAY]
        elif since < self.now - r.keep_samples:
            since = since // SPAN[HOUR] * SPAN[HOUR]
        return since, until

    def _where(self, since: int, until: int, *, coarsest: int = DAY) -> tuple[str, list[int]]:
        """The rows that cover ``[since, until)``, from tiers no coarser than ``coarsest``."""
        rolled_hour = self.h.rolled(HOUR) or 0 if coarsest >= HOUR else 0
        rolled_day = self.h.rolled(DAY) or 0 if coarsest >= DAY else 0
        pieces = segments(since, until, rolled_hour=rolled_hour, rolled_day=rolled_day)
        if not pieces:
            return "0", []
        sql = " OR ".join("(u.tier = ? AND u.t >= ? AND u.t < ?)" for _ in pieces)
        return f"({sql})", [v for p in pieces for v in p]

    def usage(self, by: str, since: int, until: int) -> list[Usage]:
        """One row per key of ``by`` (user, env, host, hour), most held first (hours in order).

        SQLite sums by GPU and holder (or by period for hours: rows come in that order), a
        few thousand groups; the names and local hours are put on them here. Grouping by
        name or by ``strftime`` in SQL joined or converted every row: seconds over a year."""
        where, args = self._where(since, until)
        acc: dict[tuple[str, ...], list[float]] = {}
        gpus: dict[tuple[str, ...], set[int]] = {}
        if by == "hour":  # the fleet's whole hours
            most: dict[tuple[str, ...], int] = {}
            for t, n, *sums in self.h.db.execute(
                f"SELECT t, gpus, {', '.join(_COLUMNS)} FROM fleet_hours WHERE t >= ? AND t < ?", (since, until)
            ):
                hour = (f"{time.localtime(t).tm_hour:02d}",)
                _add(acc.setdefault(hour, [0.0] * len(sums)), sums)
                most[hour] = max(most.get(hour, 0), n)  # GPUs seen at once
            counts = most
        else:
            names, holders = self._names()
            sql = f"SELECT u.gpu, u.holder, {_SUMS} FROM usage u WHERE {where} GROUP BY u.gpu, u.holder"
            for gpu, holder, *sums in self.h.db.execute(sql, args):
                key = _key(by, names.get(gpu, "?"), holders.get(holder))
                if key is not None:
                    _add(acc.setdefault(key, [0.0] * len(sums)), sums)
                    gpus.setdefault(key, set()).add(gpu)
            counts = {k: len(v) for k, v in gpus.items()}
        rows = [_usage(k, (*sums, counts[k])) for k, sums in acc.items()]
        if by == "hour":
            return sorted(rows, key=lambda u: u.key)
        return sorted(rows, key=lambda u: (-u.held_h, -u.observed_h, u.key))

    def _names(self) -> tuple[dict[int, str], dict[int, tuple[str, str]]]:
        """Each GPU's host and each holder's user and environment, by id."""
        hosts = dict(self.h.db.execute("SELECT id, host FROM gpus"))
        holders = {i: (user, env) for i, user, env in self.h.db.execute("SELECT id, user, env FROM holders")}
        return hosts, holders

    def total(self, since: int, until: int) -> Usage:
        where, args = self._where(since, until)
        row = self.h.db.execute(f"SELECT {_SUMS}, count(DISTINCT u.gpu) FROM usage u WHERE {where}", args).fetchone()
        return _usage(("total",), row)

    def report(self, by: str, since_s: float) -> Report:
        """Usage by ``by`` over the last ``since_s`` seconds, with the hosts that are usually
        free and the hours of the day when the fleet is (see :func:`usually_free_hours`)."""
        if by not in GROUPS:
            raise ValueError(f"cannot group by {by!r}: choose from {', '.join(GROUPS)}")
        since, until = self.period(since_s)
        hosts = self.usage("host", since, until)
        hours = self.usage("hour", since, until)
        rows = {"host": hosts, "hour": hours}.get(by) or self.usage(by, since, until)
        return Report(
            since=since,
            until=until,
            by=by,
            rows=rows,
            total=self.total(since, until),
            usually_free_hosts=sorted((u for u in hosts if (u.free_pct or 0) > 50), key=lambda u: -(u.free_pct or 0)),
            usually_free_hours=usually_free_hours(hours),
        )

    def series(self, since: int, until: int, step: int | None = None) -> list[Point]:
        """The fleet over the whole steps of ``step`` seconds in ``[since, until)`` (default: an
        hour up to two weeks, else a day), each the average number of GPUs in each state.
        Steps of an hour or more come from the fleet's hour sums; shorter ones from samples."""
        step = step or (SPAN[HOUR] if until - since <= 14 * SPAN[DAY] else SPAN[DAY])
        since, until = -(-since // step) * step, until // step * step  # whole steps only
        if step >= SPAN[HOUR]:
            sql = (
                f"SELECT t / {step} * {step} AS p, sum(seconds), sum(held), sum(worked), sum(free) "
                "FROM fleet_hours WHERE t >= ? AND t < ? GROUP BY p ORDER BY p"
            )
            args: list[int] = [since, until]
        else:
            sql = (
                f"SELECT u.t / {step} * {step} AS p, sum(u.seconds), sum(u.held), sum(u.worked), sum(u.free) "
                "FROM usage u WHERE u.tier = ? AND u.t >= ? AND u.t < ? GROUP BY p ORDER BY p"
            )
            args = [SAMPLE, since, until]
        return [Point(int(p), s / step, h / step, w / step, f / step) for p, s, h, w, f in self.h.db.execute(sql, args)]


def usually_free_hours(hours: Sequence[Usage], *, within_pct: float = 5) -> list[Usage]:
    """The hours of the day when the most of the fleet is free: those whose free share is
    within ``within_pct`` points of the best hour's (none when no hour saw a free GPU). A host
    is usually free when its GPUs were free more than half the time."""
    best = max((u.free_pct or 0 for u in hours), default=0)
    return [u for u in hours if best > 0 and (u.free_pct or 0) >= best - within_pct]


#: The sums a report reads, in the order _usage takes them.
_COLUMNS = ("seconds", "held", "worked", "idle", "free", "power", "power_s")
_SUMS = ", ".join(f"sum(u.{c})" for c in _COLUMNS)


def _add(into: list[float], sums: Sequence[float | None]) -> None:
    for i, v in enumerate(sums):
        into[i] += v or 0.0


def _key(by: str, host: str, holder: tuple[str, str] | None) -> tuple[str, ...] | None:
    """The row a GPU-and-holder sum belongs to (None: not in this grouping)."""
    if by == "host":
        return (host,)
    if holder is None:  # nobody held the GPU
        return None
    user, env = holder
    if by == "user":
        return (user,)
    return (user, env) if env else None


def _usage(key: tuple[str, ...], r: Sequence[float | int | None]) -> Usage:
    seconds, held, worked, idle, free, power, power_s, gpus = (0 if v is None else v for v in r)
    return Usage(
        key=key,
        observed_h=seconds / 3600,
        held_h=held / 3600,
        worked_h=worked / 3600,
        idle_h=idle / 3600,
        free_h=free / 3600,
        energy_kwh=power / 3.6e6 if power_s else None,
        gpus=int(gpus),
    )

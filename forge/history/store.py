"""The history database: SQLite, one file, written by `forge record`, read by reports and pages.

Every row of ``usage`` has the same shape whatever period it covers: GPU-seconds observed,
held (by a holder: a user and maybe an environment), worked (weighted by utilization), held
while idle, free by policy, memory and power integrals. Three tiers: every sample (kept
``keep_samples``), sums per hour (``keep_hours``) and per day (``keep_days``). Each record
rolls the hours and days that ended into their sums (and each hour into one row for the whole
fleet, ``fleet_hours``), so a report over a year reads a few hundred thousand day rows and a
few thousand fleet hours, not every sample.

A sample counts for the time since the GPU's previous sample, up to ``max_gap``: a host that
did not answer leaves a gap, not invented hours. Writers take SQLite's write lock for the
whole record (``BEGIN IMMEDIATE``) and the database is in WAL mode: two recorders at once
queue, readers never block, and a recorder killed at any point leaves the last committed
state (SQLite's atomic commit).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forge.errors import ForgeError
from forge.history.samples import Holder, Sample

SCHEMA_VERSION = 1

SAMPLE, HOUR, DAY = 0, 1, 2
SPAN = {HOUR: 3600, DAY: 86400}

#: The sums every usage row carries, in this order.
SUMS = ("seconds", "held", "worked", "idle", "free", "mem", "power", "power_s")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gpus (
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, uuid TEXT NOT NULL, idx INTEGER NOT NULL,
    model TEXT NOT NULL, UNIQUE (host, uuid));
CREATE TABLE IF NOT EXISTS holders (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, env TEXT NOT NULL, UNIQUE (user, env));
CREATE TABLE IF NOT EXISTS usage (
    tier INTEGER NOT NULL, t INTEGER NOT NULL, gpu INTEGER NOT NULL, holder INTEGER NOT NULL,
    {", ".join(f"{s} REAL NOT NULL" for s in SUMS)},
    PRIMARY KEY (tier, t, gpu, holder)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fleet_hours (
    t INTEGER PRIMARY KEY, gpus INTEGER NOT NULL, {", ".join(f"{s} REAL NOT NULL" for s in SUMS)});
CREATE TABLE IF NOT EXISTS latest (gpu INTEGER PRIMARY KEY, t INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rolled (tier INTEGER PRIMARY KEY, until INTEGER NOT NULL);
"""

NOBODY = 0  # the holder id of rows for time nobody held the GPU


class HistoryError(ForgeError):
    """The history database cannot be opened, read or written."""


@dataclass(frozen=True)
class Retention:
    """How long each tier is kept and how a sample counts (seconds, from [history])."""

    keep_samples: float = 2 * 86400
    keep_hours: float = 90 * 86400
    keep_days: float = 5 * 365 * 86400
    max_gap: float = 300
    idle_utilization_pct: float = 5


@dataclass(frozen=True)
class Recorded:
    """What one record stored."""

    at: int
    gpus: int
    hosts: int
    rolled_hours: int
    rolled_days: int


def default_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "forge" / "history.sqlite"


class History:
    """An open history database."""

    def __init__(self, path: Path, retention: Retention | None = None, *, create: bool = True) -> None:
        self.path = path
        self.retention = retention or Retention()
        if not create and not path.exists():
            raise HistoryError(f"no history at {path}", hint="record some first: `forge record` (e.g. from cron)")
        try:
            if create:
                _create_private(path)
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            if create:
                with self.write():
                    for statement in _statements(_SCHEMA):
                        self.db.execute(statement)
                    self._check_version()
            else:  # a reader: takes no write lock
                self._check_version()
        except sqlite3.DatabaseError as e:
            raise HistoryError(f"cannot open the history at {path}: {e}") from e
        self._gpu_ids: dict[tuple[str, str], int] = {}
        self._holder_ids: dict[Holder, int] = {}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _check_version(self) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:
            raise HistoryError(f"{self.path} is not a forge history") from None
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise HistoryError(
                f"the history at {self.path} was written by a newer forge (schema {row[0]})", hint="upgrade forge"
            )

    # ------------------------------------------------------------------ recording

    def record(self, samples: Sequence[Sample], at: float | None = None) -> Recorded:
        """Store one probe's samples taken at ``at`` (default: now), roll up the hours and
        days that ended, and drop what is past its retention; one transaction."""
        now = int(time.time() if at is None else at)
        try:
            with self.write():
                # A sample never lands in an hour already rolled up (a slower recorder that
                # started first): it counts in the current one.
                now = max(now, self.rolled(HOUR) or 0)
                for s in samples:
                    self._add(s, now)
                hours = self.roll_up(HOUR, now)
                days = self.roll_up(DAY, self.rolled(HOUR) or now)
                self.prune(now)
        except sqlite3.DatabaseError as e:
            raise HistoryError(f"cannot write the history at {self.path}: {e}") from e
        return Recorded(now, len(samples), len({s.host for s in samples}), hours, days)

    def _add(self, s: Sample, now: int) -> None:
        gpu = self._gpu_id(s)
        last = self.db.execute("SELECT t FROM latest WHERE gpu = ?", (gpu,)).fetchone()
        dt = 0.0 if last is None else float(min(max(now - last[0], 0), self.retention.max_gap))
        self.db.execute(
            "INSERT INTO latest VALUES (?, ?) ON CONFLICT (gpu) DO UPDATE SET t = max(t, excluded.t)", (gpu, now)
        )
        util = s.utilization_pct
        work = 0.0 if util is None else dt * util / 100
        mem = 0.0 if s.memory_used_mib is None else dt * s.memory_used_mib
        power, power_s = (0.0, 0.0) if s.power_w is None else (dt * s.power_w, dt)
        free = dt if s.free else 0.0
        idle_now = util is not None and util < self.retention.idle_utilization_pct
        holders = s.holders or (None,)
        share = 1 / len(holders)
        for h in holders:
            held = 0.0 if h is None else dt * share
            row = (
                dt * share,
                held,
                work * share,
                held if idle_now else 0.0,
                free * share,
                mem * share,
                power * share,
                power_s * share,
            )
            self._upsert(SAMPLE, now, gpu, NOBODY if h is None else self._holder_id(h), row)

    def _upsert(self, tier: int, t: int, gpu: int, holder: int, row: Sequence[float]) -> None:
        adds = ", ".join(f"{s} = {s} + excluded.{s}" for s in SUMS)
        self.db.execute(
            f"INSERT INTO usage VALUES (?, ?, ?, ?, {', '.join('?' * len(SUMS))}) "
            f"ON CONFLICT (tier, t, gpu, holder) DO UPDATE SET {adds}",
            (tier, t, gpu, holder, *row),
        )

    def _gpu_id(self, s: Sample) -> int:
        key = (s.host, s.uuid)
        if key not in self._gpu_ids:
            row = self.db.execute(
                "INSERT INTO gpus (host, uuid, idx, model) VALUES (?, ?, ?, ?) ON CONFLICT (host, uuid) "
                "DO UPDATE SET idx = excluded.idx, model = excluded.model RETURNING id",
                (s.host, s.uuid, s.index, s.model),
            ).fetchone()
            self._gpu_ids[key] = int(row[0])
        return self._gpu_ids[key]

    def _holder_id(self, h: Holder) -> int:
        if h not in self._holder_ids:
            row = self.db.execute(
                "INSERT INTO holders (user, env) VALUES (?, ?) ON CONFLICT (user, env) "
                "DO UPDATE SET user = excluded.user RETURNING id",
                (h.user, h.env),
            ).fetchone()
            self._holder_ids[h] = int(row[0])
        return self._holder_ids[h]

    # ------------------------------------------------------------------ tiers

    def rolled(self, tier: int) -> int | None:
        """Up to when (exclusive) ``tier``'s sums are complete; None before the first record."""
        row = self.db.execute("SELECT until FROM rolled WHERE tier = ?", (tier,)).fetchone()
        return None if row is None else int(row[0])

    def roll_up(self, tier: int, now: int) -> int:
        """Sum the finer tier's rows of every ``tier`` period that ended by ``now`` and has
        not been summed yet; returns how many periods were summed. Call inside write()."""
        span, finer = SPAN[tier], tier - 1
        end = now // span * span
        start = self.rolled(tier)
        if start is None:
            first = self.db.execute("SELECT min(t) FROM usage WHERE tier = ?", (finer,)).fetchone()[0]
            start = end if first is None else int(first) // span * span
            self.db.execute("INSERT INTO rolled VALUES (?, ?)", (tier, start))
        if end <= start:
            return 0
        sums = ", ".join(f"sum({s})" for s in SUMS)
        self.db.execute(
            f"INSERT INTO usage SELECT ?, t / {span} * {span} AS p, gpu, holder, {sums} FROM usage "
            "WHERE tier = ? AND t >= ? AND t < ? GROUP BY p, gpu, holder "
            f"ON CONFLICT (tier, t, gpu, holder) DO UPDATE SET {', '.join(f'{s} = excluded.{s}' for s in SUMS)}",
            (tier, finer, start, end),
        )
        if tier == HOUR:
            self._fleet_hours(start, end)
        self.db.execute("UPDATE rolled SET until = ? WHERE tier = ?", (end, tier))
        return (end - start) // span

    def _fleet_hours(self, start: int, end: int) -> None:
        """The whole fleet's sums of each hour in ``[start, end)``, one row per hour (kept as
        long as the day sums): what reports by hour of the day and the fleet's curve over
        time read, a few thousand rows a year instead of every GPU's hours."""
        sums = ", ".join(f"sum({s})" for s in SUMS)
        self.db.execute(
            f"INSERT INTO fleet_hours SELECT t, count(DISTINCT gpu), {sums} FROM usage "
            "WHERE tier = ? AND t >= ? AND t < ? GROUP BY t "
            f"ON CONFLICT (t) DO UPDATE SET gpus = excluded.gpus, {', '.join(f'{s} = excluded.{s}' for s in SUMS)}",
            (HOUR, start, end),
        )

    def prune(self, now: int) -> None:
        """Drop rows past their tier's retention, never before they were summed up."""
        r = self.retention
        for tier, keep in ((SAMPLE, r.keep_samples), (HOUR, r.keep_hours)):
            summed = self.rolled(tier + 1) or 0
            self.db.execute("DELETE FROM usage WHERE tier = ? AND t < ?", (tier, min(now - keep, summed)))
        self.db.execute("DELETE FROM usage WHERE tier = ? AND t < ?", (DAY, now - r.keep_days))
        self.db.execute("DELETE FROM fleet_hours WHERE t < ?", (now - r.keep_days,))


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _create_private(path: Path) -> None:
    """The database and its directory exist, readable by their owner only (the history
    names the group's users and what they ran); a symlink in their place is refused."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise HistoryError(f"cannot open the history at {path}: {e.strerror}") from e
    os.close(fd)

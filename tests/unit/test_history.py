"""The history database and its reports, on real SQLite files: samples, shares, gaps, the hour
and day sums, retention, concurrent and killed writers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge.gpu.holders import UNKNOWN, Holder, holders_of
from forge.history.report import Reader, segments
from forge.history.samples import Sample
from forge.history.store import DAY, HOUR, SAMPLE, History, HistoryError, Retention

T0 = 1_700_006_400  # a whole day (UTC)
ALICE = Holder("alice", "dev")
BOB = Holder("bob")


def gpu(
    uuid: str, *, util: float | None = 0, holders: tuple[Holder, ...] = (), free: bool = True, host: str = "gpu1"
) -> Sample:
    return Sample(host, uuid, int(uuid[-1]), "NVIDIA H200", util, 1000, 100.0, free, holders)


def sums(h: History, tier: int) -> tuple[float, ...]:
    return h.db.execute(
        "SELECT sum(seconds), sum(held), sum(worked), sum(idle), sum(free) FROM usage WHERE tier = ?", (tier,)
    ).fetchone()


def test_a_sample_counts_the_time_since_the_one_before_up_to_the_gap(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite", Retention(max_gap=300)) as h:
        h.record([gpu("GPU-1", util=50, holders=(ALICE,), free=False)], T0)  # the first counts nothing
        h.record([gpu("GPU-1", util=50, holders=(ALICE,), free=False)], T0 + 60)
        h.record([gpu("GPU-1", util=2, holders=(ALICE,), free=False)], T0 + 120)
        h.record([gpu("GPU-1", util=0)], T0 + 120 + 3600)  # an hour unseen: counts max_gap only
        seconds, held, worked, idle, free = sums(h, SAMPLE)
    assert (seconds, held, free) == (420, 120, 300)
    assert worked == pytest.approx(60 * 0.5 + 60 * 0.02)
    assert idle == 60  # held below 5 % utilization


def test_a_gpu_held_by_two_counts_a_share_for_each(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        for t in (T0, T0 + 60):
            h.record([gpu("GPU-1", util=100, holders=(ALICE, BOB), free=False)], t)
        by_user = {u.key: u for u in Reader(h, now=T0 + 120).usage("user", T0, T0 + 120)}
    assert by_user[("alice",)].held_h == by_user[("bob",)].held_h == pytest.approx(30 / 3600)
    assert by_user[("alice",)].worked_pct == pytest.approx(100)


def _fleet_days(h: History, days: int, step: int = 600) -> int:
    """Two GPUs sampled every ``step`` s for ``days`` days: gpu 1 held by alice at 50 % by
    day (08-20 UTC), free at night; gpu 2 free throughout. Returns the last sample's time."""
    t = T0
    while t <= T0 + days * 86400:
        day = 8 <= (t % 86400) // 3600 < 20
        one = gpu("GPU-1", util=50, holders=(ALICE,), free=False) if day else gpu("GPU-1")
        h.record([one, gpu("GPU-2")], t)
        t += step
    return t - step


def test_hours_and_days_are_summed_as_they_end_and_reports_read_the_coarsest(tmp_path: Path) -> None:
    r = Retention(keep_samples=7200, keep_hours=2 * 86400, max_gap=900)
    with History(tmp_path / "h.sqlite", r) as h:
        last = _fleet_days(h, 4)
        assert h.rolled(HOUR) == last // 3600 * 3600 and h.rolled(DAY) == last // 86400 * 86400
        # Retention: samples of the last 2 h only, hours of the last 2 days, every day.
        oldest = {
            tier: h.db.execute("SELECT min(t) FROM usage WHERE tier = ?", (tier,)).fetchone()[0] for tier in (0, 1, 2)
        }
        assert oldest[SAMPLE] >= last - 7200 and oldest[HOUR] >= last - 2 * 86400 and oldest[DAY] == T0
        reader = Reader(h, now=last)
        rep = reader.report("user", 4 * 86400 + 1)
        assert (rep.since, rep.until) == (T0, last + 1)
        (alice,) = rep.rows
        assert alice.key == ("alice",)
        assert alice.held_h == pytest.approx(4 * 12)  # 12 h a day for 4 days
        assert alice.worked_h == pytest.approx(4 * 6) and alice.idle_h == 0
        assert rep.total.observed_h == pytest.approx(2 * 4 * 24)  # 2 GPUs, 4 days
        assert rep.total.free_h == pytest.approx(4 * 24 + 4 * 12)
        # The night hours (20-08 UTC) are usually free, the day ones are not; host gpu1 is half free.
        hours = {u.key[0]: u.free_pct for u in reader.usage("hour", *reader.period(86400))}
        assert len(hours) == 24
        assert [u.key for u in rep.usually_free_hosts] == [("gpu1",)]
        assert rep.usually_free_hosts[0].free_pct == pytest.approx(75)


def test_the_same_period_read_from_samples_hours_or_days_sums_alike(tmp_path: Path) -> None:
    r = Retention(keep_samples=10 * 86400, keep_hours=10 * 86400, max_gap=900)
    with History(tmp_path / "h.sqlite", r) as h:
        last = _fleet_days(h, 3)
        reader = Reader(h, now=last + 1)
        since, until = T0 + 3600 * 5 + 600, last - 1800  # not on an hour
        coarse = reader.usage("host", since, until)
        # Only samples: what the tiers must add up to.
        fine_where = "(u.tier = 0 AND u.t >= ? AND u.t < ?)"
        seconds = h.db.execute(
            f"SELECT sum(seconds), sum(held) FROM usage u WHERE {fine_where}", (since, until)
        ).fetchone()
    assert sum(u.observed_h for u in coarse) == pytest.approx(seconds[0] / 3600)
    assert sum(u.held_h for u in coarse) == pytest.approx(seconds[1] / 3600)


def test_segments_take_whole_days_then_whole_hours_then_samples() -> None:
    day, hour = 86400, 3600
    got = segments(
        T0 - 1800, T0 + 2 * day + 2 * hour + 60, rolled_hour=T0 + 2 * day + 2 * hour, rolled_day=T0 + 2 * day
    )
    assert got == [
        (SAMPLE, T0 - 1800, T0),
        (DAY, T0, T0 + 2 * day),
        (HOUR, T0 + 2 * day, T0 + 2 * day + 2 * hour),
        (SAMPLE, T0 + 2 * day + 2 * hour, T0 + 2 * day + 2 * hour + 60),
    ]
    assert segments(T0, T0 + day, rolled_hour=0, rolled_day=0) == [(SAMPLE, T0, T0 + day)]


def test_names_from_the_hosts_are_kept_only_when_they_look_like_names() -> None:
    from forge.gpu.model import Gpu, GpuHold, GpuProcess
    from forge.gpu.policy import GpuVerdict

    g = Gpu(0, "GPU-1", "H200", None, 1, 1, 1, 0, 0, None, None, None, None, None)
    planted = GpuHold("GPU-1", "<script>alert(1)</script>", "victim\x1b[2J", "container")
    procs = (
        GpuProcess(1, "python", 10, "GPU-1", user="carol"),
        GpuProcess(2, "python", 10, "GPU-1", user="x" * 100),
        GpuProcess(3, "python", 10, "GPU-1", user="alice", env_name="dev", env_owner="alice"),
    )
    got = holders_of(GpuVerdict(g, procs, False, "busy", planted))
    assert got == (Holder(UNKNOWN), Holder(UNKNOWN, UNKNOWN), Holder("alice", "dev"), Holder("carol"))


def test_the_database_is_private_and_a_symlink_in_its_place_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "h.sqlite"
    History(path).close()
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    link = tmp_path / "link.sqlite"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(HistoryError, match="cannot open the history"):
        History(link)
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(HistoryError, match="no history at"):
        History(tmp_path / "none.sqlite", create=False)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    History(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(HistoryError, match="newer forge"):
        History(path)


_WRITER = """
import sys, time
from pathlib import Path
from forge.gpu.holders import Holder
from forge.history.samples import Sample
from forge.history.store import History
h = History(Path(sys.argv[1]))
n, who = int(sys.argv[2]), sys.argv[3]
for i in range(n):
    h.record([Sample("gpu1", f"GPU-{who}{k}", k, "H200", 50.0, 1, None, False, (Holder(who),)) for k in range(8)])
    time.sleep(0.02)
print("done", flush=True)
"""


def test_concurrent_recorders_queue_and_a_killed_one_leaves_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    History(path).close()
    argv = [sys.executable, "-c", _WRITER, str(path)]
    writers = [subprocess.Popen([*argv, "60", who], stdout=subprocess.PIPE, text=True) for who in ("a", "b")]
    victim = subprocess.Popen([*argv, "100000", "c"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    os.kill(victim.pid, signal.SIGKILL)  # mid-write as likely as not: it does little else
    victim.wait()
    for w in writers:
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0 and out == "done\n"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # Each writer's GPUs are its own: every record it committed holds all 8 of them, the
    # killed one's too (one transaction per record: nothing half).
    rows = db.execute(
        "SELECT h.user, count(*) FROM usage u JOIN holders h ON h.id = u.holder WHERE tier = 0 GROUP BY h.user, t"
    ).fetchall()
    assert {who for who, _ in rows} == {"a", "b", "c"}
    assert {n for _, n in rows} == {8}
    latest = dict(
        db.execute("SELECT substr(g.uuid, 5, 1), count(*) FROM latest l JOIN gpus g ON g.id = l.gpu GROUP BY 1")
    )
    assert latest == {"a": 8, "b": 8, "c": 8}

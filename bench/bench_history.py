"""Benchmarks of issue 15 (the usage history, its reports and the page).

    .venv/bin/python bench/bench_history.py report [--hosts 50 --gpus 8 --days 365]
    .venv/bin/python bench/bench_history.py record [--hosts 64 --repeat 7] [--keep]
    .venv/bin/python bench/bench_history.py page [--loads 10] [--shots docs/img]

report: a year of one-minute samples of 50 hosts x 8 GPUs, generated day by day inside SQLite
(every minute of every GPU, 20 users holding GPUs by day on weekdays) and passed through the
store's own roll-up and retention as `forge record` would have, then `forge report --since 1y`
(by user, host and hour) timed as whole commands. Goal: under 2 s. The generated database is
kept in /var/tmp/forge-bench-history.sqlite (reused when it is there).

record: `forge record` against `forge gpus --json` on a lab of 64 hosts (root
/var/lib/forge-lab-bench, bridge forgebench0, 10.78.0.0/24), alternated A B A B, medians.
Goal: record within 1.2x of gpus --json. Both are CPU-bound here (two cores for 64 sshd, the
client and the probes): the machine's CPU and forge's own are printed beside the times.

page: `forge serve` on the lab (the default lab, brought up by the tests or `forge lab up`) in
a real headless Chromium, loaded ``--loads`` times: first contentful paint and the first frame
with the fleet's data (a performance mark the page sets), from the start of navigation. Goal:
first paint under 1 s. ``--shots DIR`` also writes the screenshot docs/history.md shows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from bench_gpus import bench_lab, busy_cpu_s  # noqa: E402

from forge.history.store import DAY, HOUR, SAMPLE, History, Retention  # noqa: E402

DB = Path("/var/tmp/forge-bench-history.sqlite")


# --------------------------------------------------------------------------- report


def generate(path: Path, hosts: list[str], gpus: int, days: int, *, weekends: bool = False) -> None:
    """``days`` days of one-minute samples of ``gpus`` GPUs on each of ``hosts`` ending now,
    through the store's roll-up and retention (the defaults: samples 2 days, hours 90 days,
    days 5 years)."""
    path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    h = History(path, Retention())
    db = h.db
    with h.write():
        for n, host in enumerate(hosts):
            for i in range(gpus):
                db.execute(
                    "INSERT INTO gpus (host, uuid, idx, model) VALUES (?, ?, ?, 'NVIDIA H200')",
                    (host, f"GPU-{n:04d}-{i:04d}", i),
                )
        for user in range(20):
            db.execute("INSERT INTO holders (id, user, env) VALUES (?, ?, 'dev')", (user + 1, f"user{user:02d}"))
    today = int(time.time()) // 86400 * 86400
    start = today - days * 86400
    t0 = time.perf_counter()
    for n in range(days + 1):
        day = start + n * 86400
        weekday = 0 if weekends else time.gmtime(day).tm_wday
        with h.write():
            # Every minute of every GPU: held from 08:00 to 20:00 UTC on weekdays by one of 20
            # users (two GPUs in three), at a utilization that varies by minute; free otherwise.
            db.execute(
                """
                INSERT INTO usage
                WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < ? - 1),
                s AS (
                    SELECT m.i AS i, g.id AS gpu,
                           (? < 5 AND (g.id + ?) % 3 != 0 AND m.i >= 480 AND m.i < 1200) AS held,
                           (abs(g.id * 7919 + m.i * 104729) % 100) AS util
                    FROM m CROSS JOIN gpus g
                )
                SELECT 0, ? + s.i * 60, s.gpu, CASE WHEN s.held THEN 1 + s.gpu % 20 ELSE 0 END,
                       60.0, s.held * 60.0, s.held * 0.6 * s.util, s.held * (s.util < 5) * 60.0,
                       (1 - s.held) * 60.0, 60.0 * (500 + s.held * 30000), 60.0 * (80 + s.held * s.util * 6), 60.0
                FROM s
                """,
                (min(1440, (int(time.time()) - day) // 60), weekday, n, day),
            )
            now = min(day + 86400, int(time.time()))
            h.roll_up(HOUR, now)
            h.roll_up(DAY, h.rolled(HOUR) or now)
            h.prune(now)
        if n % 30 == 0:
            print(f"# day {n}/{days}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    h.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    h.close()


def bench_report(args: argparse.Namespace) -> None:
    if not DB.exists() or args.regenerate:
        t0 = time.perf_counter()
        generate(DB, [f"node{n:02d}" for n in range(args.hosts)], args.gpus, args.days)
        print(f"# generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    with History(DB, create=False) as h:
        tiers = dict(h.db.execute("SELECT tier, count(*) FROM usage GROUP BY tier").fetchall())
    inv = Path(tempfile.mkdtemp()) / "hosts.toml"
    inv.write_text('[[hosts]]\nname = "node00"\naddress = "192.0.2.1"\n')
    rows = []
    for by in ("user", "host", "hour"):
        argv = [sys.executable, "-m", "forge", "-i", str(inv), "report", "--db", str(DB), "--since", "1y", "--by", by]
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            r = subprocess.run(argv, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - t)
            assert r.returncode == 0, r.stderr
        rows.append((by, statistics.median(times), min(times)))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "forge", "--version"], capture_output=True, check=True)
    startup = time.perf_counter() - start
    size = DB.stat().st_size / 1e6
    n = args.hosts * args.gpus
    print(f"history: {args.days} days of one-minute samples of {args.hosts} hosts x {args.gpus} GPUs ({n} GPUs)")
    print(f"rows kept: samples {tiers.get(SAMPLE, 0)}, hour sums {tiers.get(HOUR, 0)}, day sums {tiers.get(DAY, 0)};"
          f" file {size:.0f} MB")  # fmt: skip
    print()
    print(f"| forge report --since 1y | median of {args.repeat} (s) | best (s) | goal |")
    print("| --- | --- | --- | --- |")
    for by, med, best in rows:
        print(f"| --by {by} | {med:.2f} | {best:.2f} | < 2 s |")
    print(f"| (forge --version, the interpreter's start) | {startup:.2f} | | |")


# --------------------------------------------------------------------------- record


def bench_record(args: argparse.Namespace) -> None:
    from forge.lab import Lab

    lab = Lab(bench_lab(args.hosts))
    t0 = time.perf_counter()
    lab.up()
    print(f"# bench lab of {args.hosts} hosts up in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    db = Path(tempfile.mkdtemp()) / "history.sqlite"
    base = [sys.executable, "-m", "forge", "-i", str(lab.inventory_path)]
    commands = {"forge gpus --json": [*base, "gpus", "--json"], "forge record": [*base, "record", "--db", str(db)]}
    try:
        for argv in commands.values():  # warm the page cache and the hosts' sshd
            subprocess.run(argv, capture_output=True, check=False)
        samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():  # A B A B
                machine, wall = busy_cpu_s(), time.perf_counter()
                before = os.times()
                r = subprocess.run(argv, capture_output=True, text=True, check=False)
                after = os.times()
                own = (after.children_user + after.children_system) - (before.children_user + before.children_system)
                samples[name].append((time.perf_counter() - wall, busy_cpu_s() - machine, own))
                assert r.returncode == 0, r.stderr
    finally:
        if not args.keep:
            lab.down()
    cores = os.cpu_count() or 1
    head = f"{args.hosts} hosts, {args.repeat} runs each, A B A B"
    print(f"| {head} | wall median (s) | machine CPU (s) | forge's CPU (s) |")
    print("| --- | --- | --- | --- |")
    med = {}
    for name, runs in samples.items():
        wall, machine, own = (statistics.median(c) for c in zip(*runs, strict=True))
        med[name] = wall
        print(f"| {name} | {wall:.2f} | {machine:.2f} of {wall * cores:.2f} | {own:.2f} |")
    ratio = med["forge record"] / med["forge gpus --json"]
    print()
    print(f"forge record / forge gpus --json: {ratio:.2f}x (goal <= 1.2x)")


# --------------------------------------------------------------------------- page


def bench_page(args: argparse.Namespace) -> None:
    from forge.inventory import load
    from tests.browser import Browser

    inv = Path(args.inventory)
    db = Path(tempfile.mkdtemp()) / "history.sqlite"
    # The chart shows whole hours: a day of generated samples for the lab's hosts stands in for
    # a day of `forge record` (the table of the fleet now is the lab's, probed live).
    generate(db, [h.name for h in load(inv).hosts], 4, 1, weekends=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge", "-i", str(inv), "serve", "--port", "0", "--interval", "5", "--db", str(db)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stderr.readline())
        assert m
        url = f"http://127.0.0.1:{m.group(1)}/"
        time.sleep(args.interval_wait)  # the first probe is done: the page gets data at once
        fcp, data = [], []
        with Browser(width=1280, height=1100) as b:
            for _ in range(args.loads):
                b.open(url)
                b.wait_for("document.body && document.body.dataset.ready === 'now'")
                # the paint entry is queued after the frame that painted: wait for it too
                b.wait_for("performance.getEntriesByName('first-contentful-paint').length > 0")
                marks = json.loads(
                    b.js(
                        "JSON.stringify(Object.fromEntries(performance.getEntriesByType('paint')"
                        ".concat(performance.getEntriesByName('forge-first-data')).map(e => [e.name, e.startTime])))"
                    )
                )
                fcp.append(marks["first-contentful-paint"] / 1000)
                data.append(marks["forge-first-data"] / 1000)
            if args.shots:
                b.wait_for("!!document.querySelector('#chart svg polyline')")
                Path(args.shots).mkdir(parents=True, exist_ok=True)
                b.screenshot(Path(args.shots) / "serve.png")
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"| the page on the lab, {args.loads} loads | median (s) | worst (s) | goal |")
    print("| --- | --- | --- | --- |")
    print(f"| first contentful paint | {statistics.median(fcp):.3f} | {max(fcp):.3f} | < 1 s |")
    print(f"| first frame with the fleet's data | {statistics.median(data):.3f} | {max(data):.3f} | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    r = sub.add_parser("report")
    r.add_argument("--hosts", type=int, default=50)
    r.add_argument("--gpus", type=int, default=8)
    r.add_argument("--days", type=int, default=365)
    r.add_argument("--repeat", type=int, default=5)
    r.add_argument("--regenerate", action="store_true")
    rec = sub.add_parser("record")
    rec.add_argument("--hosts", type=int, default=64)
    rec.add_argument("--repeat", type=int, default=7)
    rec.add_argument("--keep", action="store_true")
    p = sub.add_parser("page")
    p.add_argument("--inventory", default="/var/lib/forge-lab/hosts.toml")
    p.add_argument("--loads", type=int, default=10)
    p.add_argument("--interval-wait", type=float, default=3.0)
    p.add_argument("--shots", default=None)
    args = ap.parse_args()
    {"report": bench_report, "record": bench_record, "page": bench_page}[args.part](args)


if __name__ == "__main__":
    main()

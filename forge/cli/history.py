"""`forge record` and `forge report`: the fleet's usage history (see docs/history.md)."""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from forge.cli import output
from forge.cli.gpus import exit_code
from forge.cli.main import DURATION, State, pass_state
from forge.durations import format_duration
from forge.history.report import GROUPS, Reader, Report, Usage
from forge.history.samples import samples_of
from forge.history.store import History, Retention, default_path
from forge.inventory import Inventory

#: The columns of each grouping's key.
KEY_HEADERS = {"user": ["USER"], "env": ["USER", "ENV"], "host": ["HOST"], "hour": ["HOUR"]}


def history_path(inv: Inventory, override: str | None) -> Path:
    raw = override or inv.history.path
    return Path(raw).expanduser() if raw else default_path()


def retention(inv: Inventory) -> Retention:
    h = inv.history
    return Retention(
        keep_samples=h.seconds("keep_samples"),
        keep_hours=h.seconds("keep_hours"),
        keep_days=h.seconds("keep_days"),
        max_gap=h.seconds("max_gap"),
        idle_utilization_pct=h.idle_utilization_pct,
    )


db_option = click.option(
    "--db",
    "db",
    metavar="PATH",
    help="The history database. Default: [history] path in hosts.toml, else "
    "$XDG_DATA_HOME/forge/history.sqlite (~/.local/share/forge/history.sqlite).",
)


@click.command()
@click.argument("targets", nargs=-1)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print what was recorded as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Say what was recorded (it does on a terminal anyway).")
@click.option("--timeout", default=20.0, show_default=True, metavar="SECONDS", help="Per-host probe timeout.")
@pass_state
@click.pass_context
def record(
    ctx: click.Context,
    state: State,
    targets: tuple[str, ...],
    db: str | None,
    as_json: bool,
    verbose: bool,
    timeout: float,
) -> None:
    """Probe every GPU of the fleet once and add it to the usage history (TARGETS: hosts,
    tags or 'all'). Made for cron, e.g. every minute:

    \b
        * * * * *  forge record

    Silent when every host answered (for cron's mail), unless on a terminal or -v. A host
    that does not answer leaves a gap in its history; the others are recorded.

    \b
    Exit status: 0 every host answered; 4 some did not (or their GPUs could not be read);
    5 none did.
    """
    from forge.gpu.survey import survey

    inv = state.inventory
    hosts = inv.select(list(targets) or None)
    path = history_path(inv, db)
    reports = survey(inv, hosts, pool=state.pool, timeout=timeout)
    samples = samples_of(reports)
    with History(path, retention(inv)) as history:
        done = history.record(samples)
    missing = [r for r in reports if r.gpus is None or not r.gpus.ok]
    if as_json:
        output.emit_json(
            {
                "db": str(path),
                "at": done.at,
                "gpus": done.gpus,
                "hosts": done.hosts,
                "rolled_hours": done.rolled_hours,
                "rolled_days": done.rolled_days,
                "not_recorded": [{"host": r.host.name, "reason": _why(r)} for r in missing],
            }
        )
    elif verbose or output.is_terminal():
        output.echo(
            f"recorded {done.gpus} GPUs of {done.hosts} hosts at {datetime.fromtimestamp(done.at):%H:%M:%S} in {path}"
        )
    for r in missing:
        output.echo(f"forge record: {r.host.name}: not recorded: {_why(r)}", err=True, one_line=True)
    ctx.exit(exit_code(reports))


def _why(r: Any) -> str:
    return str(r.error if r.gpus is None else r.gpus.reason or r.gpus.status.value)


@click.command()
@db_option
@click.option(
    "--since", type=DURATION, default="7d", show_default=True, metavar="DURATION", help="How far back: 24h, 7d, 4w, 1y."
)
@click.option(
    "--by",
    type=click.Choice(GROUPS),
    default="user",
    show_default=True,
    help="One row per user, per user's environment, per host, or per hour of the day (local time).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (one row per key, GPU-hours).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="Also draw the fleet over the period into FILE (.svg or .png; needs forge-fleet[plot]).",
)
@pass_state
def report(state: State, db: str | None, since: float, by: str, as_json: bool, as_csv: bool, plot: Path | None) -> None:
    """GPU-hours per user, environment, host or hour of the day over a period: held (a process
    of the user ran on the GPU, or it was given to their environment), worked (weighted by
    utilization), idle (held below [history] idle_utilization_pct) and free; then the hosts
    and hours of the day that are usually free. Reads what `forge record` stored.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    inv = state.inventory
    path = history_path(inv, db)
    with History(path, retention(inv), create=False) as history:
        reader = Reader(history)
        rep = reader.report(by, since)
        if plot is not None:
            from forge.history.plot import draw

            draw(reader.series(rep.since, rep.until), plot, title=f"forge fleet, {_span(rep)}")
    if as_json:
        output.emit_json(report_json(rep))
    elif as_csv:
        sys.stdout.write(report_csv(rep))
    else:
        output.echo(report_text(rep))
    if plot is not None and not as_json and not as_csv:
        output.echo(f"drew {plot}")


def _span(rep: Report) -> str:
    a, b = datetime.fromtimestamp(rep.since), datetime.fromtimestamp(rep.until)
    return f"{a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M} ({format_duration(rep.until - rep.since)})"


def _h(v: float) -> str:
    return f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} %"


def rows_of(rep: Report) -> tuple[list[str], list[list[str]]]:
    """The table of a report: headers, then one row per key."""
    keys = KEY_HEADERS[rep.by]
    if rep.by in ("user", "env"):
        headers = [*keys, "HELD GPU-h", "WORKED GPU-h", "WORKED", "IDLE GPU-h", "ENERGY kWh"]
        cells = [[*u.key, _h(u.held_h), _h(u.worked_h), _pct(u.worked_pct), _h(u.idle_h), _energy(u)] for u in rep.rows]
    else:
        headers = [*keys, "GPUS", "SEEN GPU-h", "HELD GPU-h", "WORKED GPU-h", "IDLE GPU-h", "FREE"]
        cells = [
            [*u.key, str(u.gpus), _h(u.observed_h), _h(u.held_h), _h(u.worked_h), _h(u.idle_h), _pct(u.free_pct)]
            for u in rep.rows
        ]
    return headers, cells


def _energy(u: Usage) -> str:
    return "-" if u.energy_kwh is None else f"{u.energy_kwh:.1f}"


def report_text(rep: Report) -> str:
    headers, cells = rows_of(rep)
    t = rep.total
    lines = [f"forge report: {_span(rep)}", ""]
    lines.append(output.table(cells, headers) if cells else f"(nothing recorded by {rep.by} in this period)")
    lines += [
        "",
        f"fleet: {_h(t.observed_h)} GPU-h seen, {_h(t.held_h)} held ({_pct(t.worked_pct)} of it worked), "
        f"{_h(t.idle_h)} held idle, {_pct(t.free_pct)} free",
    ]
    if rep.usually_free_hosts:
        lines.append(
            "usually free hosts: " + ", ".join(f"{u.key[0]} ({_pct(u.free_pct)})" for u in rep.usually_free_hosts)
        )
    if rep.usually_free_hours:
        hours = ", ".join(_hour_ranges([int(u.key[0]) for u in rep.usually_free_hours]))
        free = sum(u.free_gpus for u in rep.usually_free_hours) / len(rep.usually_free_hours)
        seen = max(u.gpus for u in rep.usually_free_hours)
        lines.append(f"usually free hours: {hours} ({free:.1f} of {seen} GPUs free on average)")
    return "\n".join(lines)


def _hour_ranges(hours: list[int]) -> list[str]:
    """[22, 23, 0, 1, 2, 9] -> ["22:00-03:00", "09:00-10:00"] (runs that wrap past midnight join)."""
    if len(hours) == 24:
        return ["all day"]
    runs: list[list[int]] = []
    for h in sorted(hours):
        if runs and runs[-1][-1] == h - 1:
            runs[-1].append(h)
        else:
            runs.append([h])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][-1] == 23:
        runs[0] = runs.pop() + runs[0]
    return [f"{r[0]:02d}:00-{(r[-1] + 1) % 24:02d}:00" for r in runs]


def usage_json(u: Usage, by: str | None) -> dict[str, Any]:
    return {
        **(dict(zip([k.lower() for k in KEY_HEADERS[by]], u.key, strict=True)) if by else {}),
        "gpus": u.gpus,
        "observed_gpu_h": round(u.observed_h, 4),
        "held_gpu_h": round(u.held_h, 4),
        "worked_gpu_h": round(u.worked_h, 4),
        "idle_gpu_h": round(u.idle_h, 4),
        "free_gpu_h": round(u.free_h, 4),
        "energy_kwh": None if u.energy_kwh is None else round(u.energy_kwh, 4),
    }


def report_json(rep: Report) -> dict[str, Any]:
    return {
        "since": rep.since,
        "until": rep.until,
        "by": rep.by,
        "rows": [usage_json(u, rep.by) for u in rep.rows],
        "total": usage_json(rep.total, None),
        "usually_free": {
            "hosts": [u.key[0] for u in rep.usually_free_hosts],
            "hours": [int(u.key[0]) for u in rep.usually_free_hours],
        },
    }


def report_csv(rep: Report) -> str:
    """The rows as CSV; a cell a spreadsheet would take for a formula is quoted as text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    rows = [usage_json(u, rep.by) for u in rep.rows]
    header = list(rows[0]) if rows else [*(k.lower() for k in KEY_HEADERS[rep.by]), "held_gpu_h"]
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(r[k]) for k in header])
    return buf.getvalue()


def _cell(v: Any) -> str:
    text = "" if v is None else str(v)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

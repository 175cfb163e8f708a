"""`forge serve`: the fleet as a read-only web page (see forge.web.server and docs/history.md)."""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any

import click

from forge.cli import output
from forge.cli.history import db_option, history_path, retention
from forge.cli.main import State, pass_state
from forge.inventory import Inventory


@click.command()
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS", help="Address to listen on.")
@click.option("--port", default=8470, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option(
    "--interval",
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Probe the fleet this often (one probe however many people watch).",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="HOST",
    help="Another host name the page is reached by (e.g. the group's proxy); requests naming any other are refused.",
)
@db_option
@click.option("--timeout", default=20.0, show_default=True, metavar="SECONDS", help="Per-host probe timeout.")
@pass_state
def serve(
    state: State, bind: str, port: int, interval: float, names: tuple[str, ...], db: str | None, timeout: float
) -> None:
    """Serve a read-only page of the fleet: every host and GPU now, who holds them, refreshed
    live, and the history `forge record` stored (GPUs held, working and free over time;
    usage per user).

    It listens on 127.0.0.1: reach it from your machine with `ssh -L 8470:127.0.0.1:8470
    HOST`, or put it behind the group's own proxy (with --bind and --name). It has no login
    of its own and changes nothing; values read from the hosts are shown as text.
    """
    from forge.cli.gpus import report_json, users_json
    from forge.gpu.survey import survey
    from forge.web.server import Fleet, Site, allowed_hosts, make_server

    inv = state.inventory
    path = history_path(inv, db)

    def probe() -> dict[str, Any]:
        reports = survey(inv, list(inv.hosts), pool=state.pool, timeout=timeout)
        return {**report_json(reports, free_only=False), "users": users_json(reports)}

    fleet = Fleet(probe, interval)
    site = Site(fleet, functools.partial(history_page, inv, path), frozenset(), refresh_s=interval)
    try:
        server = make_server(site, bind, port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {bind}:{port}: {e.strerror}") from e
    site.allowed_hosts = allowed_hosts(bind, server.server_port, names)
    if not _loopback(bind):
        output.echo(
            f"forge serve: listening on {bind}, beyond this machine: the page has no login; "
            "anyone who reaches it sees the fleet",
            err=True,
        )
    host = f"[{bind}]" if ":" in bind else bind
    output.echo(f"forge serve: http://{host}:{server.server_port}/ (Ctrl-C to stop)", err=True)
    fleet.start()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        output.echo("forge serve: stopped", err=True)
    finally:
        fleet.stop.set()
        server.server_close()


def _loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def history_page(inv: Inventory, path: Path, since_s: float) -> dict[str, Any]:
    """The page's history: the fleet over the period and usage per user."""
    from forge.cli.history import usage_json
    from forge.history.report import Reader
    from forge.history.store import History

    if not path.exists():
        return {"error": "no history yet: run `forge record` from cron", "points": []}
    with History(path, retention(inv), create=False) as h:
        r = Reader(h)
        since, until = r.period(since_s)
        points = r.series(since, until)
        return {
            "since": since,
            "until": until,
            "step_s": points[1].t - points[0].t if len(points) > 1 else 3600,
            "points": [vars(p) for p in points],
            "users": [usage_json(u, "user") for u in r.usage("user", since, until)],
        }

"""`forge sync`: ship Docker images to hosts, sending only the layers each lacks."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

import click

from forge.cli import output
from forge.cli.main import State, pass_state
from forge.cli.progressbar import TerminalProgress, human_bytes
from forge.errors import ExitCode
from forge.images import codec as codecs
from forge.images.runs import ImageRun, Outcome, Status, check_images, exit_code, sync_images
from forge.images.sync import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, READS, VIAS, SyncReport
from forge.inventory import Inventory
from forge.lock import FileLock


def _images(inv: Inventory, given: tuple[str, ...]) -> list[str]:
    if given:
        return list(given)
    env = inv.environment
    images = [i for i in (env.image, *env.images) if i]
    if not images:
        raise click.UsageError(
            f"no IMAGE given and {inv.source} names none ([environment] image / images)",
        )
    return list(dict.fromkeys(images))


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@click.command()
@click.argument("images", nargs=-1, metavar="[IMAGE]...")
@click.option(
    "--to",
    "to",
    default="all",
    show_default=True,
    metavar="TARGETS",
    help="Hosts, groups/tags or 'all' (comma-separated).",
)
@click.option("--from", "from_", metavar="HOST", help="Read the image from this host's daemon (default: this machine).")
@click.option(
    "--compress",
    type=click.Choice(codecs.CHOICES),
    default="auto",
    show_default=True,
    help="auto: zstd where the host has it, else none.",
)
@click.option(
    "--concurrency",
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Hosts loading at once (each batch reads the source once).",
)
@click.option(
    "--read",
    type=click.Choice(READS),
    default="auto",
    show_default=True,
    help="How to read the image on the source: 'store' reads its layers straight from the daemon's "
    "data root (a local overlay2 daemon, readable: as root), streaming and only the layers a host lacks; "
    "'save' runs docker save; auto: store where possible, else save.",
)
@click.option(
    "--via",
    type=click.Choice(VIAS),
    default="auto",
    show_default=True,
    help="Which way the bytes go. 'client': through this machine (only the layers each target lacks). "
    "'direct': from a --from HOST to each target over SSH, nothing through this machine (a transfer key "
    "per target, restricted to the load and removed afterwards; every layer is sent). 'relay': one copy "
    "from the source along a chain of the targets, each loading and passing it on at once (targets the "
    "chain did not serve are sent to after). 'registry': pushed to the inventory's [registry] (only the "
    "layers it lacks), pulled by every target at once, with docker's own logins. auto: from another "
    "host, direct to targets that have none of the image and client to those that have some of its "
    "layers; from this machine, client. Targets the chosen way cannot serve go through this machine, "
    "with why.",
)
@click.option("--check", is_flag=True, help="Only report which hosts run stale or missing images.")
@click.option("-q", "--quiet", is_flag=True, help="For cron: no progress, one log line per host.")
@click.option(
    "--wait",
    "wait_s",
    default=0.0,
    metavar="SECONDS",
    help="If another forge sync runs, wait this long for it (default: exit 6 at once).",
)
@click.option(
    "--timeout", "timeout_s", default=DEFAULT_TIMEOUT_S, show_default=True, help="Seconds one host's transfer may take."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
@pass_state
@click.pass_context
def sync(
    ctx: click.Context,
    state: State,
    images: tuple[str, ...],
    to: str,
    from_: str | None,
    compress: str,
    read: str,
    via: str,
    concurrency: int,
    check: bool,
    quiet: bool,
    wait_s: float,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Ship IMAGE (default: the inventory's environment images) to hosts.

    Streams `docker save` -> zstd -> SSH -> `docker load`, skipping hosts that have the image
    and the layers each host already has; checks the image ID before tagging. Run as root on
    the source, forge reads the layers straight from the daemon's store instead of `docker
    save` (faster: see --read).

    \b
    Exit status: 0 every host is current; 4 some hosts failed (or, with --check, are stale
    or missing the image); 5 no host could be reached; 6 another forge sync holds the lock.
    """
    inv = state.inventory
    targets = inv.select(to)
    source = inv.here(from_)
    refs = _images(inv, images)
    if check:
        statuses = check_images(refs, source=source, targets=targets, pool=state.pool, compress=compress)
        _show_check(statuses, as_json=as_json, quiet=quiet)
        ctx.exit(exit_code(statuses))
    with FileLock("sync").acquire(wait_s):
        try:
            runs = sync_images(
                refs,
                source=source,
                targets=targets,
                pool=state.pool,
                progress=None if quiet or as_json or not sys.stderr.isatty() else _bar,
                on_run=None if as_json else functools.partial(_show_run, quiet=quiet),
                compress=compress,
                concurrency=concurrency,
                timeout_s=timeout_s,
                read=read,
                via=via,
                registry_settings=inv.registry,
            )
        except KeyboardInterrupt:
            _exit_on_second_interrupt()
            raise
    outcomes = [o for run in runs for o in run.outcomes]
    if as_json:
        output.emit_json({"results": [o.to_json() for o in outcomes]})
    ctx.exit(exit_code(outcomes))


def _bar(ref: str) -> TerminalProgress:
    return TerminalProgress(sys.stderr)


def _exit_on_second_interrupt() -> None:
    """After a first Ctrl-C, the hosts' threads end their loads and clean up while forge exits;
    a second Ctrl-C then exits at once (it used to print a traceback from Python's exit)."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(ExitCode.INTERRUPTED))


def _show_run(run: ImageRun, *, quiet: bool) -> None:
    """One image's results: a log line per host (--quiet, for cron) or a table."""
    if quiet:
        for o in run.outcomes:
            output.echo(_log_line(o), one_line=True)  # a host's text cannot add a line
        return
    if run.report is None:
        output.echo(f"forge: error: {run.ref}: {run.error}", err=True)
        return
    image = run.report.image
    output.echo(f"# {run.ref} ({image.id[:19]}, {human_bytes(image.size_bytes)}){_how(run.report)}")
    headers = ["HOST", "RESULT", "LAYERS SENT", "ARCHIVE", "WIRE", "TIME", "PROBLEM"]
    output.echo(output.table([_table_row(o) for o in run.outcomes], headers))
    for o in run.outcomes:
        if o.note:
            output.echo(f"{o.host}: {_noted(o)}", err=True)


def _noted(o: Outcome) -> str:
    """A host's note: why it came through this machine, or what happened on its way."""
    return f"sent through this machine: {o.note}" if o.via == "client" else o.note or ""


def _how(report: SyncReport) -> str:
    if report.pushed is not None:
        p = report.pushed
        return f", pushed to {p.name} ({p.layers_pushed} layers sent, {p.layers_there} already there)"
    if report.read == "store":
        return ", read from the daemon's layer store"
    if report.read == "save":
        return ", read with docker save" + (f" ({report.read_note})" if report.read_note else "")
    return ""


def _table_row(o: Outcome) -> list[str]:
    return [
        o.host,
        {"current": "up to date", "tag": "tagged", "send": "loaded"}.get(o.action, "FAILED")
        + (f" ({o.via})" if o.via in ("direct", "relay", "registry") else ""),
        f"{o.layers_sent}/{o.layers_total}" if o.ok else "",
        human_bytes(o.archive_bytes) if o.archive_bytes else "",
        human_bytes(o.wire_bytes) + f" ({o.codec})" if o.wire_bytes else "",
        f"{o.seconds:.1f} s",
        o.error or "",
    ]


def _log_line(o: Outcome) -> str:
    if not o.ok:
        return f"{_stamp()} forge sync {o.image} {o.host} FAILED {o.seconds:.1f}s: {o.error}"
    detail = ""
    if o.action == "send":
        detail = f"layers={o.layers_sent}/{o.layers_total} wire={o.wire_bytes}B codec={o.codec}"
        detail += f" read={o.read}" if o.read else ""
        detail += f" via={o.via}" if o.via else ""
    line = f"{_stamp()} forge sync {o.image} {o.host} ok {o.action} {detail} {o.seconds:.1f}s".replace("  ", " ")
    if not o.note:
        return line
    return line + (f" (through this machine: {o.note})" if o.via == "client" else f" ({o.note})")


def _show_check(statuses: list[Status], *, as_json: bool, quiet: bool) -> None:
    if as_json:
        output.emit_json({"results": [x.to_json() for x in statuses]})
    elif quiet:
        for x in statuses:
            problem = f": {x.error}" if x.error else ""
            output.echo(f"{_stamp()} forge sync --check {x.image} {x.host} {x.status}{problem}", one_line=True)
    else:
        rows = [[x.image, x.host, x.status, (x.host_id or "")[:19], x.error or ""] for x in statuses]
        output.echo(output.table(rows, ["IMAGE", "HOST", "STATUS", "HOST HAS", "PROBLEM"]))


__all__ = ["sync"]

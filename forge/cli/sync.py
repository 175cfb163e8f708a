"""`forge sync`: ship Docker images to hosts, sending only the layers each lacks."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import click

from forge import fleet
from forge.cli import output
from forge.cli.main import State, pass_state
from forge.cli.progressbar import TerminalProgress, human_bytes
from forge.errors import ConnectError, ExitCode, ForgeError
from forge.fleet import HostResult
from forge.images import codec as codecs
from forge.images.sync import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    READS,
    HostPlan,
    HostSync,
    SyncReport,
    plan,
    sync_image,
)
from forge.inventory import LOCAL_NAME, Host, Inventory
from forge.lock import FileLock
from forge.progress import NoProgress, Progress


def _source(inv: Inventory, name: str | None) -> Host:
    if name:
        return inv.host(name)
    local = next((h for h in inv.hosts if h.local), None)
    return local or Host(name=LOCAL_NAME, address="localhost", local=True)


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
    source = _source(inv, from_)
    refs = _images(inv, images)
    if check:
        _check(ctx, state, refs, source, targets, compress, as_json, quiet)
        return
    lock = FileLock("sync").acquire(wait_s)
    try:
        _sync_all(ctx, state, refs, source, targets, compress, read, concurrency, quiet, timeout_s, as_json, lock)
    except KeyboardInterrupt:
        _exit_on_second_interrupt()
        raise


def _exit_on_second_interrupt() -> None:
    """After a first Ctrl-C, the hosts' threads end their loads and clean up while forge exits;
    a second Ctrl-C then exits at once (it used to print a traceback from Python's exit)."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(ExitCode.INTERRUPTED))


def _sync_all(
    ctx: click.Context,
    state: State,
    refs: list[str],
    source: Host,
    targets: list[Host],
    compress: str,
    read: str,
    concurrency: int,
    quiet: bool,
    timeout_s: float,
    as_json: bool,
    lock: FileLock,
) -> None:
    with lock:
        failed: list[HostResult[HostSync]] = []
        total = 0
        rows: list[dict[str, Any]] = []
        for ref in refs:
            show: Progress = NoProgress()
            bar: TerminalProgress | None = None
            if not quiet and not as_json and sys.stderr.isatty():
                bar = TerminalProgress(sys.stderr)
                show = bar
            try:
                report = sync_image(
                    ref,
                    source=source,
                    targets=targets,
                    pool=state.pool,
                    compress=compress,
                    concurrency=concurrency,
                    progress=show,
                    timeout_s=timeout_s,
                    read=read,
                )
            except ForgeError as e:  # the source itself failed: every target misses this image
                if len(refs) == 1:
                    raise
                if not quiet:
                    output.echo(f"forge: error: {ref}: {e}", err=True)
                for r in _source_failed(e, source, targets):
                    total += 1
                    failed.append(r)
                    rows.append(_row(ref, r))
                    if quiet:
                        output.echo(_log_line(ref, r))
                continue
            finally:
                if bar is not None:
                    bar.close()
            for r in report.results:
                total += 1
                rows.append(_row(ref, r, report))
                if not r.ok:
                    failed.append(r)
                if quiet:
                    output.echo(_log_line(ref, r, report.read))
            if not quiet and not as_json:
                output.echo(f"# {ref} ({report.image.id[:19]}, {human_bytes(report.image.size_bytes)}){_how(report)}")
                output.echo(
                    output.table(
                        [_table_row(x) for x in rows if x["image"] == ref],
                        ["HOST", "RESULT", "LAYERS SENT", "ARCHIVE", "WIRE", "TIME", "PROBLEM"],
                    )
                )
        if as_json:
            output.emit_json({"results": rows})
    _exit(ctx, failed, total)


def _source_failed(e: ForgeError, source: Host, targets: list[Host]) -> list[HostResult[Any]]:
    """One failed result per target when the image could not be read from the source."""
    err = ForgeError(f"the source failed: {e}")
    return [HostResult(h, error=err) for h in targets if h.name != source.name]


def _how(report: SyncReport) -> str:
    if report.read == "store":
        return ", read from the daemon's layer store"
    if report.read == "save":
        return ", read with docker save" + (f" ({report.read_note})" if report.read_note else "")
    return ""


def _row(ref: str, r: HostResult[HostSync], report: SyncReport | None = None) -> dict[str, Any]:
    v = r.value
    return {
        "image": ref,
        "read": report.read if report and v and v.action == "send" else None,
        "host": r.host.name,
        "ok": r.ok,
        "action": v.action if v else "failed",
        "codec": v.codec if v else None,
        "layers_sent": v.layers_sent if v else None,
        "layers_total": v.layers_total if v else None,
        "archive_bytes": v.tar_bytes if v else None,
        "wire_bytes": v.wire_bytes if v else None,
        "seconds": round(r.duration_s, 2),
        "error": r.reason or None,
    }


def _table_row(x: dict[str, Any]) -> list[str]:
    sent = f"{x['layers_sent']}/{x['layers_total']}" if x["ok"] else ""
    return [
        x["host"],
        {"current": "up to date", "tag": "tagged", "send": "loaded"}.get(x["action"], "FAILED"),
        sent,
        human_bytes(x["archive_bytes"]) if x["archive_bytes"] else "",
        human_bytes(x["wire_bytes"]) + f" ({x['codec']})" if x["wire_bytes"] else "",
        f"{x['seconds']:.1f} s",
        x["error"] or "",
    ]


def _log_line(ref: str, r: HostResult[HostSync], read: str = "") -> str:
    v = r.value
    if v is None:
        return f"{_stamp()} forge sync {ref} {r.host.name} FAILED {r.duration_s:.1f}s: {r.reason}"
    detail = ""
    if v.action == "send":
        detail = f"layers={v.layers_sent}/{v.layers_total} wire={v.wire_bytes}B codec={v.codec}"
        detail += f" read={read}" if read else ""
    return f"{_stamp()} forge sync {ref} {r.host.name} ok {v.action} {detail} {r.duration_s:.1f}s".replace("  ", " ")


def _exit(ctx: click.Context, failed: list[HostResult[Any]], total: int) -> None:
    """The fleet rule: a host that could not be reached did not answer; one whose transfer
    failed answered but was not served."""
    reached = [not isinstance(r.error, ConnectError) for r in failed]
    code = fleet.exit_code([*[(True, True)] * (total - len(failed)), *[(ok, False) for ok in reached]])
    if code != ExitCode.OK:
        ctx.exit(code)


def _check(
    ctx: click.Context,
    state: State,
    refs: list[str],
    source: Host,
    targets: list[Host],
    compress: str,
    as_json: bool,
    quiet: bool,
) -> None:
    rows: list[dict[str, Any]] = []
    bad: list[HostResult[Any]] = []
    total = 0
    for ref in refs:
        try:
            image, tags, plans = plan(
                ref,
                source=source,
                targets=[t for t in targets if t.name != source.name],
                pool=state.pool,
                compress=compress,
                concurrency=fleet.DEFAULT_CONCURRENCY,
            )
        except ForgeError as e:  # the source failed: nothing to compare this image's hosts with
            if len(refs) == 1:
                raise
            for r in _source_failed(e, source, targets):
                total += 1
                bad.append(r)
                rows.append(
                    {
                        "image": ref,
                        "host": r.host.name,
                        "status": "error",
                        "source_id": None,
                        "host_id": None,
                        "error": r.reason,
                    }
                )
            continue
        for r in plans:
            total += 1
            p: HostPlan | None = r.value
            if p is None:
                status = "unreachable" if isinstance(r.error, ConnectError) else "error"
            else:
                status = _status(p)
            if status != "current":
                bad.append(r)
            rows.append(
                {
                    "image": ref,
                    "host": r.host.name,
                    "status": status,
                    "source_id": image.id,
                    "host_id": p.stale_id if p else None,
                    "error": r.reason or None,
                }
            )
    if as_json:
        output.emit_json({"results": rows})
    elif quiet:
        for x in rows:
            output.echo(
                f"{_stamp()} forge sync --check {x['image']} {x['host']} {x['status']}"
                + (f": {x['error']}" if x["error"] else "")
            )
    else:
        output.echo(
            output.table(
                [[x["image"], x["host"], x["status"], (x["host_id"] or "")[:19], x["error"] or ""] for x in rows],
                ["IMAGE", "HOST", "STATUS", "HOST HAS", "PROBLEM"],
            )
        )
    _exit(ctx, bad, total)


def _status(p: HostPlan) -> str:
    if p.action == "current":
        return "current"
    if p.action == "tag":
        return "untagged"
    return "stale" if p.stale_id else "missing"


__all__ = ["sync"]

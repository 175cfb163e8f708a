"""`forge reclaim`: warn the owners of idle environments, then stop them with their changes kept."""

from __future__ import annotations

import click

from forge.cli import output
from forge.cli.main import State, pass_state
from forge.durations import format_duration
from forge.env import idle
from forge.env import reclaim as rec
from forge.env.errors import EnvError
from forge.env.idle import Action
from forge.errors import ConnectError
from forge.fleet import FleetResult
from forge.inventory import Inventory
from forge.notify import notify

HEADERS = ["HOST", "ENV", "OWNER", "GPUS", "IDLE", "NOW"]
_DONE = {
    Action.BUSY: "busy",
    Action.START: "idle: first seen",
    Action.IDLE: "idle",
    Action.WARN: "warned now",
    Action.WARNED: "warned",
    Action.RECLAIM: "reclaimed now",
    Action.FINISH: "reclaimed now (finished)",
    Action.RECLAIMED: "reclaimed",
    Action.STOPPED: "stopped (not by forge)",
}
_WOULD = {Action.WARN: "would warn", Action.RECLAIM: "would reclaim", Action.FINISH: "would finish reclaiming"}


def _now(e: rec.EnvLook, dry_run: bool) -> str:
    words = _WOULD.get(e.action, _DONE[e.action]) if dry_run else _DONE[e.action]
    if e.busy:
        words += f": {e.busy}"
    if e.action in (Action.WARN, Action.WARNED) and e.reclaim_in_s is not None and not dry_run:
        words += f", reclaimed in {format_duration(e.reclaim_in_s)}"
    if e.image and e.action in (Action.RECLAIM, Action.FINISH, Action.RECLAIMED):
        words += f" into {e.image}"
    if e.error:
        words += f" (failed: {e.error})"
    return words


def _tell(inv: Inventory, e: rec.EnvLook) -> str | None:
    """[notify]: reclaim_warning when an owner was warned, reclaimed when it was stopped."""
    fields: dict[str, object] = {"env": e.env, "owner": e.owner, "host": e.host, "gpus": e.gpus}
    if e.action is Action.WARN:
        fields |= {"idle_s": e.idle_s or 0, "reclaim_in_s": e.reclaim_in_s or 0}
        return notify(inv.notify.command, "reclaim_warning", fields)
    if e.action in (Action.RECLAIM, Action.FINISH):
        return notify(inv.notify.command, "reclaimed", fields | {"image": e.image or ""})
    return None


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Look and say what would be done; change nothing on any host.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
@click.pass_context
def reclaim(ctx: click.Context, state: State, targets: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Take back the GPUs of environments idle for long, losing nothing (made for cron: run it
    every few minutes; TARGETS: hosts, tags or 'all').

    \b
    An environment is idle when its GPUs show no work ([policy] idle_utilization_pct,
    idle_memory_mib) and no SSH session is open into it. Each run is one look:
      - idle for [policy] idle_after: its owner is warned (a notice in the environment, shown
        at login and on open terminals; the [notify] command, event reclaim_warning);
      - still idle reclaim_after later: its changes are committed (forge-keep/OWNER-ENV), it is
        stopped and its GPUs released (event reclaimed). `forge migrate` brings it back.
    Processes outside forge on GPUs that show no work are listed by user, never touched.

    Exit status: 0 every host looked at, 4 some did not answer, 5 none did; 1 when an action
    failed (it is tried again at the next run)."""
    inv = state.inventory
    rule = idle.rule_of(inv.policy)
    if rule.idle_after_s is None and not dry_run:
        raise EnvError("reclaiming is off", hint='set [policy] idle_after (e.g. "12h") in hosts.toml')
    result = rec.reclaim(inv.select(list(targets) or None), rule, state.pool, dry_run=dry_run, progress=output.Notes())
    looks = [e for r in result.succeeded if r.value is not None for e in r.value.envs]
    outside = [o for r in result.succeeded if r.value is not None for o in r.value.outside]
    warnings = [] if dry_run else [w for e in looks if (w := _tell(inv, e)) is not None]
    if as_json:
        output.emit_json({
            "dry_run": dry_run,
            "environments": [e.to_json() for e in looks],
            "outside": [o.to_json() for o in outside],
            "unreachable": {r.host.name: r.reason for r in result.failed},
            "warnings": warnings,
        })  # fmt: skip
    else:
        _show(result, looks, outside, dry_run)
    for w in warnings:
        output.echo(f"forge: warning: {w}", err=True)
    code = result.exit_code()
    ctx.exit(1 if code == 0 and any(e.error for e in looks) else code)


def _show(
    result: FleetResult[rec.HostReclaim], looks: list[rec.EnvLook], outside: list[rec.OutsideHolder], dry_run: bool
) -> None:
    rows = [
        [e.host, e.env, e.owner, ",".join(e.gpus) or "-", _idle(e.idle_s), _now(e, dry_run)] for e in looks
    ]  # fmt: skip
    for r in result.failed:
        why = f"unreachable: {r.reason}" if isinstance(r.error, ConnectError) else r.reason
        rows.append([r.host.name, "-", "", "", "", why])
    output.echo(output.table(rows, HEADERS) if rows else "no environments")
    if outside:
        output.echo("\nGPUs held outside forge, showing no work (reported, never touched):")
        held = [[o.host, o.user, o.gpu, o.pid, _mib(o.memory_mib), _idle(o.idle_s)] for o in outside]
        output.echo(output.table(held, ["HOST", "USER", "GPU", "PID", "MEMORY", "IDLE"]))


def _idle(seconds: int | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def _mib(v: int | None) -> str:
    return "?" if v is None else f"{v} MiB"

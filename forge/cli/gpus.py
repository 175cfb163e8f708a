"""`forge gpus`: which GPUs are free on every host, and who holds the others."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from forge import fleet
from forge.cli import output
from forge.cli.gpuviews import (
    HOST_HEADERS,
    USER_HEADERS,
    VIEWS,
    Paint,
    Screen,
    fits,
    host_rows,
    terminal_size,
    use_colour,
    user_rows,
)
from forge.cli.main import DURATION, State, pass_state
from forge.cli.signals import SignalFlag, wait_any
from forge.durations import format_duration
from forge.errors import ExitCode
from forge.gpu.holders import Holder, holders_of
from forge.gpu.model import Gpu, GpuProcess, ProbeStatus
from forge.gpu.policy import Candidate, GpuVerdict, select
from forge.gpu.survey import HostReport, survey

if TYPE_CHECKING:
    from forge.gpu.wait import Waiting

HEADERS = ["HOST", "GPU", "MODEL", "MEMORY", "UTIL", "HOLDER", "STATE"]


def holder(p: GpuProcess) -> str:
    """Who holds a GPU, in a few words: user, program, pid, and the forge environment."""
    who = p.env_owner or p.user or "?"
    prog = os.path.basename(p.name) or p.name or "?"  # no name: ps did not list the pid
    env = f" [{p.env_name}]" if p.env_name else ""
    return f"{who}{env} {prog}:{p.pid}"


def held(v: GpuVerdict) -> str:
    """The forge environment a GPU is given to, when no process of it runs yet."""
    if v.hold is None:
        return ""
    return f"{v.hold.owner or '?'} [{v.hold.env or '?'}]"


def _memory(g: Gpu) -> str:
    used = "?" if g.memory_used_mib is None else str(g.memory_used_mib)
    total = "?" if g.memory_total_mib is None else str(g.memory_total_mib)
    return f"{used} / {total} MiB"


def _util(g: Gpu) -> str:
    return "n/a" if g.utilization_gpu_pct is None else f"{g.utilization_gpu_pct} %"


def table_rows(reports: list[HostReport], *, free_only: bool) -> list[list[str]]:
    rows: list[list[str]] = []
    for rep in reports:
        name = rep.host.name
        if rep.gpus is None:
            rows.append([name, "-", "", "", "", "", f"unreachable: {rep.error}"])
            continue
        if not rep.gpus.ok:
            label = "no GPUs" if rep.gpus.status in ("no_gpus", "not_installed") else "GPU error"
            rows.append([name, "-", "", "", "", "", f"{label}: {rep.gpus.reason}"])
            continue
        for v in rep.verdicts:
            if free_only and not v.free:
                continue
            rows.append(
                [
                    name,
                    v.gpu.label,
                    v.gpu.name or "?",
                    _memory(v.gpu),
                    _util(v.gpu),
                    ", ".join(holder(p) for p in v.processes) or held(v) or "-",
                    "free" if v.free else f"busy: {v.reason}",
                ]
            )
    return rows


def _gpu_json(v: GpuVerdict) -> dict[str, Any]:
    g: Gpu = v.gpu
    return {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "memory_used_mib": g.memory_used_mib,
        "memory_total_mib": g.memory_total_mib,
        "memory_free_mib": g.free_memory_mib,
        "utilization_gpu_pct": g.utilization_gpu_pct,
        "utilization_memory_pct": g.utilization_memory_pct,
        "temperature_c": g.temperature_c,
        "power_draw_w": g.power_draw_w,
        "mig_mode": g.mig_mode,
        "mig_device": g.mig_device,  # a MIG instance: its device index on GPU `index`
        "mig_profile": g.mig_profile,
        "parent_uuid": g.parent_uuid,
        "free": v.free,
        "reason": v.reason,
        "held_by": None if v.hold is None else {"env": v.hold.env, "owner": v.hold.owner, "kind": v.hold.kind},
        "processes": [
            {
                "pid": p.pid,
                "name": p.name,
                "user": p.user,
                "used_memory_mib": p.used_memory_mib,
                "container_id": p.container_id,
                "env": p.env_name,
                "env_owner": p.env_owner,
            }
            for p in v.processes
        ],
    }


def report_json(reports: list[HostReport], *, free_only: bool) -> dict[str, Any]:
    hosts = []
    for rep in reports:
        hosts.append(
            {
                "name": rep.host.name,
                "answered": rep.answered,
                "status": rep.gpus.status.value if rep.gpus else "unreachable",
                "reason": rep.error if rep.gpus is None else rep.gpus.reason,
                "served": served(rep),
                "holds_unknown": rep.gpus.holds_unknown if rep.gpus else None,
                "policy": vars(rep.policy),
                "gpus": [_gpu_json(v) for v in rep.verdicts if v.free or not free_only],
            }
        )
    return {
        "hosts": hosts,
        "summary": {
            "hosts": len(reports),
            "answered": sum(r.answered for r in reports),
            "gpus": sum(len(r.verdicts) for r in reports),
            "free": sum(v.free for r in reports for v in r.verdicts),
        },
    }


def users_json(reports: list[HostReport]) -> list[dict[str, Any]]:
    """Who holds which GPUs (``--by user --json``); names that do not look like names are "?"."""
    held: dict[Holder, list[dict[str, Any]]] = {}
    for rep in reports:
        for v in rep.verdicts:
            for h in holders_of(v):
                held.setdefault(h, []).append({"host": rep.host.name, "index": v.gpu.index, "gpu": v.gpu.label,
                                               "uuid": v.gpu.uuid})  # fmt: skip
    order = sorted(held, key=lambda h: (-len(held[h]), h))
    return [{"user": h.user, "env": h.env or None, "gpus": held[h]} for h in order]


def candidates_json(cands: list[Candidate]) -> list[dict[str, Any]]:
    return [
        {
            "host": c.host,
            "gpu_indexes": list(c.gpu_indexes),
            "gpu_labels": list(c.gpu_labels),
            "gpu_uuids": list(c.gpu_uuids),
            "free_gpus": c.free_gpus,
        }
        for c in cands
    ]


def served(r: HostReport) -> bool:
    """Whether the host told what its GPUs are and who holds them. A host without GPUs (or
    without nvidia-smi) has answered; one whose driver or Docker daemon does not answer has not."""
    if r.gpus is None:
        return False
    if r.gpus.status in (ProbeStatus.DRIVER_ERROR, ProbeStatus.ERROR):
        return False
    return r.gpus.holds_unknown is None


def exit_code(reports: list[HostReport]) -> ExitCode:
    return fleet.exit_code([(r.answered, served(r)) for r in reports])


_POLICY_FLAGS = {
    "max_memory_used": "max_memory_used_mib",
    "max_utilization": "max_utilization_pct",
    "max_foreign_processes": "max_foreign_processes",
}


def policy_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--max-memory-used, --max-utilization, --max-foreign-processes, handed to the command as
    one ``overrides`` mapping of the free-GPU policy's keys (only those given)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {key: kwargs.pop(flag) for flag, key in _POLICY_FLAGS.items()}
        return fn(*args, overrides={k: v for k, v in flags.items() if v is not None}, **kwargs)

    options = [
        click.option("--max-memory-used", type=click.IntRange(min=0), metavar="MIB",
                     help="Policy: busy above this much memory used."),
        click.option("--max-utilization", type=click.IntRange(0, 100), metavar="PCT",
                     help="Policy: busy above this utilization."),
        click.option("--max-foreign-processes", type=click.IntRange(min=0), metavar="N",
                     help="Policy: busy above N processes of other users."),
    ]  # fmt: skip
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--free", "free_only", is_flag=True, help="Show only free GPUs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, metavar="SECONDS", help="Refresh period of --watch.")
@click.option(
    "--gpus",
    "want",
    type=click.IntRange(min=1),
    metavar="N",
    help="Rank the hosts that have N free GPUs (best first) and the GPUs to use on each.",
)
@click.option(
    "--min-free-memory",
    type=click.IntRange(min=0),
    default=0,
    metavar="MIB",
    help="With --gpus: GPUs need this much free memory.",
)
@policy_options
@click.option(
    "--by",
    "view_by",
    type=click.Choice(VIEWS),
    help="One row per GPU, per host (free/total, memory, a utilization bar, holders) or per user "
    "holding GPUs. Default: per GPU, or per host on a terminal too small for a row per GPU.",
)
@click.option("-v", "--per-gpu", is_flag=True, help="One row per GPU, however many (the same as --by gpu).")
@click.option(
    "--wait",
    "wait_for",
    type=click.IntRange(min=1),
    metavar="N",
    help="Wait until one host has N free GPUs (with --min-free-memory each), probing every "
    "--interval seconds, then show them as --gpus N does and exit 0. For scripts.",
)
@click.option(
    "--wait-timeout",
    type=DURATION,
    metavar="DURATION",
    help="With --wait: give up after this long (90s, 10m, 2h), exit status 7. Default: wait on.",
)
@click.option("--timeout", default=20.0, show_default=True, metavar="SECONDS", help="Per-host probe timeout.")
@pass_state
@click.pass_context
def gpus(
    ctx: click.Context,
    state: State,
    targets: tuple[str, ...],
    free_only: bool,
    as_json: bool,
    watch: bool,
    interval: float,
    want: int | None,
    min_free_memory: int,
    overrides: dict[str, int],
    view_by: str | None,
    per_gpu: bool,
    wait_for: int | None,
    wait_timeout: float | None,
    timeout: float,
) -> None:
    """Show every GPU of the fleet (TARGETS: hosts, tags or 'all'): model, memory, utilization,
    who holds it, and whether it is free.

    A GPU is free when its used memory, utilization and number of other users' processes are
    within the policy ([gpu_policy] in hosts.toml, a host's own gpu_policy, then these flags).
    Hosts that cannot be reached or have no GPU appear as rows with the reason.

    Exit status: 0 when every host answered; 4 when some did not, or their GPUs could not be
    read (the NVIDIA driver does not answer) or the GPUs forge environments hold could not be
    (the Docker daemon does not answer: those GPUs are never shown free); 5 when none answered.
    A host without GPUs or without nvidia-smi has answered. With --wait: 0 once the GPUs are
    free (whoever else did not answer), 7 when --wait-timeout passed first, 1 when no host
    has that many GPUs at all.
    """
    inv = state.inventory
    hosts = inv.select(list(targets) or None)

    def probe() -> list[HostReport]:
        with output.HostCounter("probed", len(hosts)) as counter:
            return survey(inv, hosts, pool=state.pool, overrides=overrides, timeout=timeout, progress=counter)

    if per_gpu and view_by not in (None, "gpu"):
        raise click.UsageError("-v/--per-gpu and --by host/user exclude each other")
    want = _wanted(want, wait_for, wait_timeout, watch)
    view = View(
        free_only=free_only,
        as_json=as_json,
        want=want,
        min_free_memory=min_free_memory,
        by="gpu" if per_gpu else view_by or ("gpu" if len(hosts) == 1 else None),  # asked for, else by size
        colour=not as_json and use_colour(),
    )
    if wait_for is not None:

        def quiet() -> list[HostReport]:  # the wait's own line is the progress
            return survey(inv, hosts, pool=state.pool, overrides=overrides, timeout=timeout)

        _wait_then_show(view, quiet, state, interval=interval, limit=wait_timeout)
        ctx.exit(ExitCode.OK)
    if not watch:
        ctx.exit(view.show(probe()))
    _watch(view, probe, state, interval)
    ctx.exit(ExitCode.OK)


def _watch(view: View, probe: Callable[[], list[HostReport]], state: State, interval: float) -> None:
    """--watch until Ctrl-C: in place on a terminal, else frame after frame."""
    with output.Interrupt(on_first=state.pool.close) as stop:
        if not view.as_json and output.is_terminal():
            _watch_in_place(view, probe, stop, interval)
        else:
            _watch_lines(view, probe, stop, interval)


def _wanted(want: int | None, wait_for: int | None, wait_timeout: float | None, watch: bool) -> int | None:
    """The N of --gpus N, which --wait N sets too; the options that do not go together."""
    if wait_for is None:
        if wait_timeout is not None:
            raise click.UsageError("--wait-timeout needs --wait N")
        return want
    if watch or (want is not None and want != wait_for):
        raise click.UsageError("--wait N shows the hosts as --gpus N does: not with --watch or another --gpus")
    return wait_for


def _wait_then_show(
    view: View, probe: Callable[[], list[HostReport]], state: State, *, interval: float, limit: float | None
) -> None:
    """--wait: probe until the GPUs are free, show them, tell [notify]."""
    with output.Interrupt(on_first=state.pool.close) as stop, output.StatusLine() as line:
        reports, best = _wait(view, probe, stop, line, interval=interval, limit=limit)
    view.show(reports)
    from forge.notify import notify  # --wait only: not on every probe's start-up

    fields = {"host": best.host, "gpus": best.gpu_uuids, "gpu_indexes": best.gpu_indexes}
    if (warning := notify(state.inventory.notify.command, "gpus_free", fields)) is not None:
        output.echo(f"forge: warning: {warning}", err=True, one_line=True)


def _wait(
    view: View,
    probe: Callable[[], list[HostReport]],
    stop: SignalFlag,
    line: output.StatusLine,
    *,
    interval: float,
    limit: float | None,
) -> tuple[list[HostReport], Candidate]:
    """Probe until a host has ``view.want`` free GPUs; the reports that showed them and the
    best host."""
    from forge.gpu.wait import NeverFits, never_fits, wait_until  # --wait only

    want = view.want or 1

    def fit(reports: list[HostReport]) -> list[Candidate] | None:
        if cands := view.candidates(reports):
            return cands
        answers = [r.gpus for r in reports if r.gpus is not None]
        why = never_fits(answers, want) if len(answers) == len(reports) else None
        if why is not None:
            raise NeverFits(f"cannot wait for {want} free GPU(s) on one host: {why}")
        return None

    def waiting(w: Waiting[list[HostReport]]) -> None:
        best = replace(view, want=1).candidates(w.snapshot)  # the host with the most usable GPUs
        now = f"best now: {best[0].host} with {best[0].free_gpus} free" if best else "none free now"
        line.show(f"waiting for {want} free GPU(s) on one host ({now}) for {format_duration(w.waited_s)}")

    what = f"{want} free GPU(s) on one host"
    reports, found = wait_until(probe, fit, interval=interval, timeout=limit, stop=stop, on_wait=waiting, what=what)
    return reports, found[0]


def _watch_lines(view: View, probe: Callable[[], list[HostReport]], stop: SignalFlag, interval: float) -> None:
    """Frames one after the other (not a terminal: a file, a pipe, JSON)."""
    while not stop.is_set():
        reports = probe()
        if stop.is_set():  # interrupted mid-frame: the frame is cut short, not drawn
            break
        output.echo(_watch_line(interval))
        view.show(reports)
        stop.wait(interval)


def _watch_line(interval: float) -> str:
    return f"forge gpus — {datetime.now():%H:%M:%S} — every {interval:g} s, Ctrl-C to stop"


def _watch_in_place(view: View, probe: Callable[[], list[HostReport]], stop: SignalFlag, interval: float) -> None:
    """Frames drawn in place on the terminal; a resize lays the last one out again at once."""
    with Screen(sys.stdout) as screen:
        while not stop.is_set():
            reports = probe()
            if stop.is_set():
                break
            frame = functools.partial(_frame, view, reports, _watch_line(interval))
            screen.draw(frame)
            deadline = time.monotonic() + interval
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                wait_any([stop, screen.resized], left)
                if screen.resized.is_set() and not stop.is_set():
                    screen.draw(frame)


def _frame(view: View, reports: list[HostReport], line: str, columns: int, lines: int) -> str:
    return line + "\n" + view.render(reports, lines=lines - 1)


@dataclass(frozen=True)
class View:
    """How `forge gpus` shows a survey: JSON, or a table (a row per GPU, host or user), with
    the best hosts for --gpus N."""

    free_only: bool
    as_json: bool
    want: int | None
    min_free_memory: int
    by: str | None = None  # None: per GPU, or per host when a row per GPU does not fit
    colour: bool = False

    def show(self, reports: list[HostReport]) -> ExitCode:
        if self.as_json:
            data = report_json(reports, free_only=self.free_only)
            cands = self.candidates(reports)
            if cands is not None:
                data["candidates"] = candidates_json(cands)
            if self.by == "user":
                data["users"] = users_json(reports)
            output.emit_json(data)
        else:
            lines = terminal_size()[1] if output.is_terminal() else None
            click.echo(self.render(reports, lines=lines))
        return exit_code(reports)

    def render(self, reports: list[HostReport], *, lines: int | None) -> str:
        """The table (and the best hosts), laid out for a screen of ``lines`` (None: no limit).
        Every cell is cleaned of what a host could use to drive the terminal."""
        by = self.by or self._auto(reports, lines)
        paint = Paint(self.colour)
        if by == "host":
            text = output.table(host_rows(reports, paint), HOST_HEADERS, cleaned=True)
        elif by == "user":
            rows = user_rows(reports, paint)
            text = output.table(rows, USER_HEADERS, cleaned=True) if rows else "No GPU is held."
        else:
            text = output.table(table_rows(reports, free_only=self.free_only), HEADERS)
        cands = self.candidates(reports)
        if cands is not None:
            text += "\n\n" + self.best(cands)
        return text

    def _auto(self, reports: list[HostReport], lines: int | None) -> str:
        rows = len(table_rows(reports, free_only=self.free_only))
        return "gpu" if lines is None or fits(rows, lines) else "host"

    def candidates(self, reports: list[HostReport]) -> list[Candidate] | None:
        if self.want is None:
            return None
        return select(
            [r.gpus for r in reports if r.gpus is not None],
            count=self.want,
            min_free_memory_mib=self.min_free_memory,
            policy={r.host.name: r.policy for r in reports},
            me=reports[0].me if reports else None,  # the SSH user (the same fleet-wide as a rule)
        )

    def best(self, cands: list[Candidate]) -> str:
        if not cands:
            return f"No host has {self.want} free GPU(s) with {self.min_free_memory} MiB free each."
        rows = [[c.host, ",".join(c.gpu_labels), ",".join(c.gpu_uuids), str(c.free_gpus)] for c in cands]
        return output.table(rows, ["BEST HOSTS", "GPUS", "UUIDS", "FREE"])

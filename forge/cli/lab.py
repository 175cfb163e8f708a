"""``forge lab``: bring the test fleet up, show it, take it down. A thin adapter over
:mod:`forge.lab`: parse options, call the library, render, map errors to exit codes."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from forge.errors import ForgeError
from forge.lab import Lab, LabConfig, state
from forge.lab.config import ROOT_ENV, default_root
from forge.lab.flavors import DEFAULT_FLAVORS, FLAVORS, parse_flavors

F = TypeVar("F", bound=Callable[..., Any])


def _progress(message: str) -> None:
    click.echo(f"lab: {message}", err=True)


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ForgeError as e:
            click.echo(f"forge lab: {e}", err=True)
            raise SystemExit(int(e.exit_code)) from e
        except ValueError as e:
            raise click.UsageError(str(e)) from e

    return wrapper  # type: ignore[return-value]


root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Lab directory (default ${ROOT_ENV} or /var/lib/forge-lab).",
)


@click.group()
def lab() -> None:
    """A fleet of GPU hosts on this machine (network namespaces with sshd and dockerd)."""


def _flavors(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    try:
        return parse_flavors(value) if value is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@lab.command()
@root_option
@click.option(
    "--hosts",
    "n_hosts",
    type=click.IntRange(1, 200),
    default=4,
    show_default=True,
    help="Number of GPU hosts (gpu1..gpuN), besides the data host.",
)
@click.option(
    "--flavors",
    callback=_flavors,
    default=",".join(DEFAULT_FLAVORS),
    show_default=True,
    metavar="LIST",
    help="Docker engines, given to gpu1, gpu2, ... in turn: " + ", ".join(FLAVORS) + ".",
)
@click.option("--bastion", is_flag=True, help="Put the hosts on an inner network that only a jump host reaches.")
@click.option("--bridge", default=None, help="A second lab on this machine: its own bridge name.")
@click.option("--network", default=None, metavar="CIDR", help="A second lab: its own network (e.g. 10.79.0.0/24).")
@click.option("--netns-prefix", default=None, help="A second lab: its own namespace prefix.")
@click.option(
    "--docker-subnet-base", type=click.IntRange(0, 253), default=None, help="A second lab: container subnets."
)
@click.option("--user", default=None, help="A second lab: its own user (also names the other user and group).")
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=None,
    metavar="MS",
    help="Delay every SSH link from this machine into the lab by MS each way (0: none), as a "
    "fleet far away would have. Kept until changed or the lab goes down.",
)
@_errors
def up(
    root: Path | None,
    n_hosts: int,
    flavors: tuple[str, ...],
    bastion: bool,
    latency: float | None,
    **identity: Any,
) -> None:
    """Bring the lab up (idempotent) and write its hosts.toml.

    A lab already recorded at the root keeps its bridge, network, namespaces and user; its
    host count, flavors and bastion must be the ones given (else take it down first).
    """
    started = time.monotonic()
    path = (root or default_root()).absolute()
    settings: dict[str, Any] = {
        "hosts": n_hosts,
        "flavors": flavors,
        "bastion": bastion,
        **{k: v for k, v in identity.items() if v is not None},
    }
    recorded = state.load(path)
    # A recorded lab keeps what it derived (other user, inner network); a new one derives.
    cfg = (
        dataclasses.replace(state.config_from(path, recorded), **settings)
        if recorded
        else LabConfig(root=path, **settings)
    )
    the_lab = Lab(cfg, _progress)
    the_lab.up()
    if latency is not None:
        the_lab.set_latency(latency)
    click.echo(str(the_lab.inventory_path))
    _progress(f"up in {time.monotonic() - started:.1f} s")


@lab.command()
@root_option
@click.option("--purge", is_flag=True, help="Also delete the cached base image.")
@_errors
def down(root: Path | None, purge: bool) -> None:
    """Remove everything the lab created (works on a half-built lab)."""
    started = time.monotonic()
    Lab.at(root, _progress).down(purge_cache=purge)
    _progress(f"down in {time.monotonic() - started:.1f} s")


@lab.command()
@root_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_errors
def status(root: Path | None, as_json: bool) -> None:
    """Show what runs: per host its namespace, sshd and dockerd."""
    st = Lab.at(root).status()
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
        return
    if not st.exists:
        click.echo(f"no lab at {st.root}")
        return
    behind = "  behind a bastion (jump host)" if st.bastion else ""
    click.echo(f"root {st.root}  bridge {'up' if st.bridge else 'down'}{behind}")

    def word(v: bool | None) -> str:
        return "-" if v is None else ("up" if v else "DOWN")

    click.echo(f"{'HOST':6} {'ADDRESS':13} {'NETNS':6} {'SSHD':6} {'DOCKERD':8} {'FLAVOR':18} ENGINE")
    for h in st.hosts:
        cells = [f"{h.name:6}", f"{h.address:13}", f"{word(h.netns):6}", f"{word(h.sshd):6}", f"{word(h.dockerd):8}"]
        click.echo(" ".join([*cells, f"{h.flavor or '-':18}", h.engine or "-"]))


@lab.command()
@root_option
@click.option(
    "--load", "load_on", multiple=True, metavar="HOST", help="Also import it into this GPU host's daemon (repeatable)."
)
@_errors
def image(root: Path | None, load_on: tuple[str, ...]) -> None:
    """Build (once) the base image forge-lab/debian:bookworm and optionally load it."""
    the_lab = Lab.at(root, _progress)
    click.echo(str(the_lab.ensure_base_image()))
    for host in load_on:
        the_lab.load_base_image(host)


def _indexes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None or value == "all":
        return None if value is None else [-1]
    try:
        return sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of GPU indexes (e.g. 0,2 or all)") from None


@lab.command("gpu")
@root_option
@click.argument("host")
@click.option("--busy", callback=_indexes, metavar="IDX,...|all", help="Put these GPUs to work (--util, --memory).")
@click.option("--idle", callback=_indexes, metavar="IDX,...|all", help="Make these GPUs idle: 0 % and 0 MiB used.")
@click.option("--util", default=90, show_default=True, type=click.IntRange(0, 100), metavar="PCT", help="With --busy.")
@click.option(
    "--memory", default=40000, show_default=True, type=click.IntRange(min=0), metavar="MIB", help="With --busy."
)
@click.option(
    "--user",
    metavar="NAME",
    help="With --busy: a process of this user (of this machine, e.g. the lab's other user) holds "
    "the GPUs, so forge shows who holds them. --idle or --reset ends it.",
)
@click.option(
    "--mig", callback=_indexes, metavar="IDX,...|all", help="Split these GPUs into MIG instances (as a captured H200)."
)
@click.option(
    "--slice",
    "slice_",
    metavar="IDX/DEV",
    help="MIG device DEV of GPU IDX in use: --memory MiB of it (0: none), by a process of --user.",
)
@click.option("--reset", is_flag=True, help="Back to four idle GPUs (what `forge lab up` gives a host).")
@click.option("--json", "as_json", is_flag=True, help="Print the host's GPU state as JSON.")
@_errors
def gpu(
    root: Path | None,
    host: str,
    busy: list[int] | None,
    idle: list[int] | None,
    util: int,
    memory: int,
    user: str | None,
    mig: list[int] | None,
    slice_: str | None,
    reset: bool,
    as_json: bool,
) -> None:
    """Show or set what a lab host's replayed nvidia-smi reports, to watch `forge gpus`,
    `--wait` and `migrate` react: e.g. `forge lab gpu gpu1 --busy 0,1 --util 80 --user
    nobody`, then `forge lab gpu gpu1 --idle all`. Without options, the host's GPUs now."""
    the_lab = Lab.at(root)
    if reset:
        if busy is not None or idle is not None:
            raise click.UsageError("--reset and --busy/--idle exclude each other")
        the_lab.reset_gpus(host)
    every = [g["index"] for g in (the_lab.gpu_state(host) or {"gpus": []})["gpus"]]
    if idle is not None:
        the_lab.load_gpus(host, every if idle == [-1] else idle, utilization_pct=0, memory_used_mib=0)
    if mig is not None:
        the_lab.mig_gpus(host, every if mig == [-1] else mig)
    if slice_ is not None:
        index, _, device = slice_.partition("/")
        if not (index.isdigit() and device.isdigit()):
            raise click.BadParameter(f"{slice_!r} is not IDX/DEV (e.g. 0/3)", param_hint="--slice")
        the_lab.load_slice(host, int(index), int(device), memory_used_mib=memory, user=user)
    elif user is not None and busy is None:
        raise click.UsageError("--user goes with --busy or --slice")
    if busy is not None:
        chosen = every if busy == [-1] else busy
        the_lab.load_gpus(host, chosen, utilization_pct=util, memory_used_mib=memory, user=user)
    _show_gpu_state(host, the_lab.gpu_state(host), as_json=as_json)


def _show_gpu_state(host: str, st: dict[str, Any] | None, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    if st is None:
        click.echo(f"{host}: no nvidia-smi")
        return
    click.echo(f"{host}: {st.get('mode', 'ok')}, {len(st['gpus'])} GPUs, {len(st.get('processes', []))} processes")
    procs = st.get("processes", [])
    for g in st["gpus"]:
        pids = [p["pid"] for p in procs if p["gpu_uuid"] == g["uuid"] and "gi" not in p]
        util = "n/a" if g.get("utilization_gpu_pct") is None else f"{g['utilization_gpu_pct']:3d} %"
        by = f"  pid {pids[0]}" if pids else ""
        click.echo(f"  {g['index']}  {g['uuid']}  {util}  {g['memory_used_mib']:>6} / {g['memory_total_mib']} MiB{by}")
        for d in g.get("mig_devices", []) if g.get("mig_mode") == "Enabled" else []:
            where = (g["uuid"], d["gi"], d["ci"])
            on = [p["pid"] for p in procs if (p["gpu_uuid"], p.get("gi"), p.get("ci")) == where]
            by = f"  pid {on[0]}" if on else ""
            label = f"{g['index']}/{d['index']}"
            click.echo(f"    {label}  {d['uuid']}  MIG {d['profile']}  {d['memory_total_mib']} MiB{by}")

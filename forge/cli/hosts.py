"""`forge hosts`: the inventory as a table, and `--check` to reach every host."""

from __future__ import annotations

from typing import Any

import click

from forge import fleet
from forge.cli import output
from forge.cli.main import State, pass_state
from forge.fleet import HostResult
from forge.hostcheck import HostCheck, check_host
from forge.inventory import Host


@click.command()
@click.argument("targets", nargs=-1)
@click.option(
    "--check", is_flag=True, help="Connect to each host in parallel: reachability, SSH latency, Docker version."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds to wait for each host.")
@pass_state
@click.pass_context
def hosts(
    ctx: click.Context, state: State, targets: tuple[str, ...], check: bool, as_json: bool, timeout: float
) -> None:
    """List the inventory's hosts (TARGETS: names, tags or 'all'; default all).

    With --check, exit status 0 means every host answered, 4 that some did not, 5 that none did.
    """
    inv = state.inventory
    selected = inv.select(list(targets) or None)
    source = str(inv.path) if inv.path else None
    if not check:
        if as_json:
            output.emit_json({"inventory": source, "hosts": [_host_json(h) for h in selected]})
        else:
            output.echo(f"# {inv.source}")
            rows = [[h.name, h.describe(), ",".join(h.tags), h.host_key_policy] for h in selected]
            output.echo(output.table(rows, ["HOST", "SSH", "TAGS", "HOST KEYS"]))
        return
    with output.HostCounter("checked", len(selected)) as counter:
        results = fleet.run(
            selected,
            lambda s: check_host(s, timeout=timeout),
            pool=state.pool,
            deadline_s=timeout + max(h.connect_timeout for h in selected) if selected else None,
            progress=counter,
        )
    checks = [_check_json(r) for r in results]
    if as_json:
        output.emit_json({"inventory": source, "hosts": checks})
    else:
        output.echo(
            output.table([_check_row(x) for x in checks], ["HOST", "SSH", "UP", "LATENCY", "DOCKER", "PROBLEM"])
        )
    ctx.exit(results.exit_code())


def _host_json(h: Host) -> dict[str, Any]:
    return {"name": h.name, "target": h.describe(), "tags": list(h.tags), "host_key_policy": h.host_key_policy}


def _check_json(r: HostResult[HostCheck]) -> dict[str, Any]:
    c = r.value
    return {
        "name": r.host.name,
        "target": r.host.describe(),
        "reachable": r.ok,
        "connect_ms": round(c.connect_ms, 1) if c else None,
        "latency_ms": round(c.latency_ms, 1) if c else None,
        "docker": c.docker_version if c else None,
        "error": r.reason if not r.ok else (c.docker_error if c and not c.docker_version else None),
    }


def _check_row(x: dict[str, Any]) -> list[str]:
    latency = "" if x["latency_ms"] is None else f"{x['latency_ms']:.1f} ms"
    return [x["name"], x["target"], "yes" if x["reachable"] else "NO", latency, x["docker"] or "-", x["error"] or ""]

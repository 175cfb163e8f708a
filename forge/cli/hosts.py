"""`forge hosts`: the inventory as a table, and `--check` to reach every host."""

from __future__ import annotations

from typing import Any

import click

from forge import fleet
from forge.cli import output
from forge.cli.main import State, pass_state
from forge.hostcheck import HostCheck, check_host


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
    if not check:
        if as_json:
            output.emit_json(
                {
                    "inventory": str(inv.path) if inv.path else None,
                    "hosts": [
                        {
                            "name": h.name,
                            "target": h.describe(),
                            "tags": list(h.tags),
                            "host_key_policy": h.host_key_policy,
                        }
                        for h in selected
                    ],
                }
            )
            return
        output.echo(f"# {inv.source}")
        output.echo(
            output.table(
                [[h.name, h.describe(), ",".join(h.tags), h.host_key_policy] for h in selected],
                ["HOST", "SSH", "TAGS", "HOST KEYS"],
            )
        )
        return

    with output.HostCounter("checked", len(selected)) as counter:
        results = fleet.run(
            selected,
            lambda s: check_host(s, timeout=timeout),
            pool=state.pool,
            deadline_s=timeout + max(h.connect_timeout for h in selected) if selected else None,
            on_done=counter,
        )
    rows: list[dict[str, Any]] = []
    for r in results:
        c: HostCheck | None = r.value
        rows.append(
            {
                "name": r.host.name,
                "target": r.host.describe(),
                "reachable": r.ok,
                "connect_ms": round(c.connect_ms, 1) if c else None,
                "latency_ms": round(c.latency_ms, 1) if c else None,
                "docker": c.docker_version if c else None,
                "error": r.reason if not r.ok else (c.docker_error if c and not c.docker_version else None),
            }
        )
    if as_json:
        output.emit_json({"inventory": str(inv.path) if inv.path else None, "hosts": rows})
    else:
        output.echo(
            output.table(
                [
                    [
                        x["name"],
                        x["target"],
                        "yes" if x["reachable"] else "NO",
                        "" if x["latency_ms"] is None else f"{x['latency_ms']:.1f} ms",
                        x["docker"] or "-",
                        x["error"] or "",
                    ]
                    for x in rows
                ],
                ["HOST", "SSH", "UP", "LATENCY", "DOCKER", "PROBLEM"],
            )
        )
    ctx.exit(results.exit_code())

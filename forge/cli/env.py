"""`forge migrate`, `forge ps`, `forge stop`, `forge ssh`: the dev environment, from any host."""

from __future__ import annotations

import getpass
import os
from typing import Any

import click

from forge import keys
from forge.cli import output
from forge.cli.main import DURATION, State, pass_state
from forge.env import access, envs, idle, queue, sshconfig
from forge.env import migrate as mig
from forge.env.errors import EnvError
from forge.env.idle import Mark
from forge.env.launch import wait_ready
from forge.env.listing import Environment, HostListing
from forge.env.names import check_name
from forge.errors import ConnectError, ExitCode
from forge.gpu.holders import env_name, user_name
from forge.inventory import Inventory
from forge.notify import notify

PS_HEADERS = ["HOST", "ENV", "OWNER", "GPUS", "PORT", "IMAGE", "AGE", "IDLE", "STATE"]


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.command()
@click.option(
    "--to",
    "to",
    default="idle",
    show_default=True,
    metavar="idle|HOST",
    help="'idle': the best host for the GPUs asked (not the current one); or a host name.",
)
@click.option("--env", "env", metavar="NAME", help="Environment name. Default: [environment].name.")
@click.option("--gpus", type=click.IntRange(min=1), metavar="N", help="GPUs to give it. Default: [environment].gpus.")
@click.option("--min-free-memory", type=click.IntRange(min=0), metavar="MIB", help="Free memory each GPU needs.")
@click.option("--image", metavar="REF", help="Image to run. Default: [environment].image.")
@click.option("--image-from", metavar="HOST", help="Ship the image from HOST (default: the environment's host).")
@click.option(
    "--keep-changes", is_flag=True, help="Commit the running container and ship that (only its new top layer travels)."
)
@click.option("--among", metavar="HOSTS", help="With --to idle: hosts or tags to choose from (comma list).")
@click.option(
    "--ssh-config/--no-ssh-config", default=False, help="Keep a managed block in ~/.ssh/config so that `ssh ENV` works."
)
@click.option(
    "--authorized-keys",
    type=click.Path(dir_okay=False, exists=True),
    metavar="FILE",
    help="Public keys the container's sshd accepts. Default: the inventory key's .pub, "
    "else every ~/.ssh/id_*.pub (as forge build).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="No free GPUs now: wait in line for them (first come first served, on every host it may "
    "land on), then launch. Ctrl-C leaves the line.",
)
@click.option(
    "--wait-timeout",
    type=DURATION,
    metavar="DURATION",
    help="With --wait: give up after this long (90s, 2h), exit status 7.",
)
@click.option(
    "--wait-interval",
    type=click.FloatRange(min=0.2),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="With --wait: how often to look again.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
@click.pass_context
def migrate(
    ctx: click.Context,
    state: State,
    to: str,
    env: str | None,
    gpus: int | None,
    min_free_memory: int | None,
    image: str | None,
    image_from: str | None,
    keep_changes: bool,
    among: str | None,
    ssh_config: bool,
    authorized_keys: str | None,
    wait: bool,
    wait_timeout: float | None,
    wait_interval: float,
    as_json: bool,
) -> None:
    """Move the dev environment to another host, or start it where it does not run yet.

    \b
    Steps: find the environment across the fleet; choose the target; ship the image (only
    missing layers); ensure the data volume; claim the GPUs atomically; start the container
    (GPUs by UUID, --ipc=host, -p PORT:22, -u UID:GID, --restart=always); wait for its sshd;
    then remove the old one. If a step fails, the old environment keeps running and what was
    created for the new one is removed. Prints how to reach it (docs/migrate.md). With --wait,
    waits in line for the GPUs (docs/sharing.md).
    """
    inv = state.inventory
    name = env or inv.environment.name
    target = inv.host(to) if to != "idle" else None
    key_host = target or inv.hosts[0]
    # public keys only: a private key given by mistake is refused, never copied anywhere
    authorized = keys.read([authorized_keys]) if authorized_keys else keys.default_keys(key_host.identity_file)
    req = mig.request_from(
        inv,
        env=name,
        to=to,
        gpus=gpus,
        min_free_memory_mib=min_free_memory,
        image=image,
        image_from=image_from,
        keep_changes=keep_changes,
        among=tuple(among.split(",")) if among else None,
        authorized_keys="\n".join(authorized),
        wait=wait,
        wait_timeout_s=_needs_wait(wait, wait_timeout),
        wait_interval_s=wait_interval,
    )
    result = mig.migrate(inv, req, state.pool, progress=output.Notes())
    _tell_launched(inv, result)
    _show_migrated(inv, result, ssh_config=ssh_config, as_json=as_json)
    ctx.exit(ExitCode.OK)


def _show_migrated(inv: Inventory, result: mig.Result, *, ssh_config: bool, as_json: bool) -> None:
    """Publish the way in (pinned keys, the ~/.ssh/config block) and say where it runs."""
    way, config_path = access.publish(inv.host(result.host), result, manage_config=ssh_config)
    for w in result.warnings:
        output.echo(f"forge: warning: {w}", err=True, one_line=True)
    if as_json:
        output.emit_json({**result.to_json(), "ssh": access.display(way)})
        return
    moved = f" (from {result.old_host})" if result.old_host else ""
    indexes = ",".join(result.gpu_labels)
    output.echo(f"{result.env} runs on {result.host}{moved}, GPU(s) {indexes}, port {result.port}")
    output.echo(access.display(way))
    if config_path:
        output.echo(f"ssh {result.env}   (block in {config_path})")


def _needs_wait(wait: bool, timeout: float | None) -> float | None:
    if timeout is not None and not wait:
        raise click.UsageError("--wait-timeout needs --wait")
    return timeout


def _tell_launched(inv: Inventory, result: mig.Result) -> None:
    """[notify]: the environment runs; a notifier that fails becomes one of the warnings."""
    fields = {"env": result.env, "owner": result.owner, "host": result.host, "gpus": result.gpus,
              "port": result.port, "old_host": result.old_host or ""}  # fmt: skip
    if (warning := notify(inv.notify.command, "launched", fields)) is not None:
        result.warnings.append(warning)


def _row(e: Environment, listing: HostListing) -> list[str]:
    created = e.container.created_s
    return [
        e.host,
        e.name,
        e.owner or "?",
        ",".join(e.gpus) or "-",
        str(e.ssh_port or "-"),
        e.container.image,
        _age(listing.now_s - created if created else None),
        _idle(idle.marks_of(listing.marks, e.container.id), listing.now_s),
        e.container.status,
    ]


def _idle(marks: dict[str, Mark], now: int) -> str:
    """What forge reclaim last saw: idle for how long, warned, reclaimed; - when it saw it busy
    (or never looked)."""
    if "reclaimed" in marks:
        return "reclaimed"
    seconds = idle.idle_for(marks, now)
    if seconds is None:
        return "-"
    return _age(seconds) + (" (warned)" if "warned" in marks else "")


def _env_json(e: Environment, listing: HostListing) -> dict[str, Any]:
    marks = idle.marks_of(listing.marks, e.container.id)
    reclaimed = marks.get("reclaimed")
    return e.to_json() | {
        "idle_s": idle.idle_for(marks, listing.now_s),
        "warned": "warned" in marks,
        "reclaimed": reclaimed is not None,
    }


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
@click.pass_context
def ps(ctx: click.Context, state: State, targets: tuple[str, ...], as_json: bool) -> None:
    """Environments across the fleet (TARGETS: hosts, tags or 'all'): host, GPUs, port, image,
    age, idle time, state. Every owner's are shown, and the requests waiting in line for GPUs on
    each host (`forge migrate --wait`): their GPUs in parentheses, how long they have waited.

    IDLE is how long `forge reclaim` (run from cron) has seen it idle: no GPU work and no SSH
    session ("-": busy at its last look, or never looked at); "(warned)" once its owner was
    warned; "reclaimed" once stopped with its changes kept (`forge migrate` brings it back).

    Exit status: 0 when every host answered, 4 when some did not, 5 when none did."""
    inv = state.inventory
    listings = envs.list_fleet(inv.select(list(targets) or None), state.pool, volumes=True)
    rows, items = [], []
    for r in listings:
        if r.value is None:
            state_ = f"unreachable: {r.reason}" if isinstance(r.error, ConnectError) else r.reason
            rows.append([r.host.name, "-", "", "", "", "", "", "", state_])
            continue
        for e in r.value.environments:
            rows.append(_row(e, r.value))
            items.append(_env_json(e, r.value))
    waiting = [w for r in listings.succeeded if r.value is not None for w in _waiting(r.value)]
    if as_json:
        unreachable = {r.host.name: r.reason for r in listings.failed}
        output.emit_json({"environments": items, "waiting": waiting, "unreachable": unreachable})
    else:
        rows += [[w["host"], w["env"], w["owner"], f"({w['gpus']})", "", "", _age(w["waited_s"]), "",
                  f"waiting: {w['place']} of {w['of']} in line"] for w in waiting]  # fmt: skip
        output.echo(output.table(rows, PS_HEADERS))
    ctx.exit(listings.exit_code())


def _waiting(listing: HostListing) -> list[dict[str, Any]]:
    """The host's line for GPUs (forge migrate --wait), names that are not names shown as ?."""
    line = queue.line(listing.tickets, listing.now_s)
    return [
        {
            "host": listing.host,
            "env": env_name(t.env),
            "owner": user_name(t.owner),
            "gpus": t.gpus,
            "min_free_memory_mib": t.min_free_mib,
            "place": n,
            "of": len(line),
            "waited_s": max(0, listing.now_s - t.since),
        }  # fmt: skip
        for n, t in enumerate(line, 1)
    ]


@click.command()
@click.argument("env", required=False)
@click.option("--ssh-config/--keep-ssh-config", default=True, help="Also remove its block from ~/.ssh/config.")
@pass_state
def stop(state: State, env: str | None, ssh_config: bool) -> None:
    """Stop and remove the environment ENV (default: [environment].name) and release its GPUs."""
    inv = state.inventory
    name = env or inv.environment.name
    gone = envs.stop(inv, name, state.pool)
    if gone is None:
        raise EnvError(f"environment {name!r} runs on no reachable host")
    if ssh_config:
        sshconfig.remove(name)
    output.echo(f"stopped {name} on {gone.host} ({gone.container.name})")


# Options end at ENV: in `forge ssh dev ls --help` the --help is ls's, not forge's.
@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--trust-new-keys",
    is_flag=True,
    help="Accept host keys other than the ones pinned for ENV (it was started from another machine).",
)
@click.argument("env", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_state
def ssh(state: State, trust_new_keys: bool, env: str | None, command: tuple[str, ...]) -> None:
    """Log in to the environment ENV (default: [environment].name) with X forwarding
    (untrusted: ForwardX11Trusted no), or run COMMAND there.

    COMMAND is a program and its arguments, passed as they are (each argument arrives as one
    word, like `docker exec`): for shell syntax, give it to a shell, e.g.
    `forge ssh dev sh -c 'cd /data && ls'`.

    The login checks the container's host key against the one pinned in
    ~/.ssh/forge_known_hosts when forge started it (or, the first time on this machine, read
    on its GPU host over forge's verified connection), and goes through the host's jump hosts
    with their keys checked. Nothing read from the host (labels) reaches ssh's command line
    unchecked: the port is the one docker publishes, the user must be a plain user name."""
    inv = state.inventory
    name = env or inv.environment.name
    check_name(name)
    if command[:1] == ("--",):  # `forge ssh dev -- ls -l`: options ended at ENV already
        command = command[1:]
    found = envs.locate(inv, name, state.pool)
    if found is None:
        raise EnvError(f"environment {name!r} runs on no reachable host")
    port = found.published_port
    if port is None:
        raise EnvError(f"environment {name!r} on {found.host} publishes no SSH port (is it running?)")
    host = inv.host(found.host)
    live = wait_ready(state.pool.get(host), found.container.id, port, timeout_s=10)
    pinned = sshconfig.pinned_keys(name)
    if pinned and set(live) != set(pinned) and not trust_new_keys:
        raise EnvError(
            f"the SSH host key of environment {name!r} on {found.host} is not the one pinned when it was "
            "started; another container may be answering for it",
            hint="if it was started or moved from another machine, run `forge ssh --trust-new-keys "
            f"{name}` once; else check `forge ps` on {found.host}",
        )
    known = sshconfig.pin_keys(name, live)
    user = found.user or host.user or getpass.getuser()
    argv = access.ssh_argv(access.access(host, env=name, port=port, user=user, known_hosts=known), list(command))
    state.pool.close()
    os.execvp(argv[0], argv)

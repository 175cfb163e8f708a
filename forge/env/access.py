"""How a person reaches an environment: one route to its sshd, spelled for ``ssh`` and for
``~/.ssh/config``.

The container's sshd is published on a port of its GPU host. The way there is the host's own
route (its jump hosts, each checked as forge checks them, :mod:`forge.transport.route`), then
that port, whose key must be the one forge pinned for the environment (``HostKeyAlias
forge-ENV`` in ``~/.ssh/forge_known_hosts``). X11 is forwarded untrusted (``ssh -X`` with
``ForwardX11Trusted=no``): root in the container (the dev user has sudo) cannot read or drive
the user's display. No agent forwarding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from forge import shell
from forge.env import sshconfig
from forge.env.sshconfig import alias
from forge.inventory import Host
from forge.transport import openssh
from forge.transport.route import Hop, Route, resolve

if TYPE_CHECKING:  # migrate's result; migrate does not import this module
    from forge.env.migrate import Result

X11 = ("-X", "-o", "ForwardX11Trusted=no")


@dataclass(frozen=True)
class Access:
    """The way to one environment's sshd."""

    env: str
    route: Route  # the host's jump hosts, then the container's sshd

    @property
    def hop(self) -> Hop:
        return self.route.target


def access(host: Host, *, env: str, port: int, user: str, known_hosts: Path) -> Access:
    """The way to ``env``'s sshd on ``port`` of ``host``, logging in as ``user``."""
    host_route = (
        resolve(host) if not host.local else Route((Hop(label=host.name, hostname="127.0.0.1", port=22, user=user),))
    )
    target = host_route.target
    hops = list(host_route.jumps)
    if target.proxy_command:  # the host is reached through the user's own command: go through it
        hops.append(target)
    sshd = replace(
        target,
        label=env,
        port=port,
        user=user,
        known_hosts=(known_hosts,),
        policy="strict",
        key_alias=alias(env),
        proxy_command=None,
    )
    return Access(env, Route((*hops, sshd)))


def publish(host: Host, result: Result, *, manage_config: bool) -> tuple[Access, Path | None]:
    """After a launch: pin the keys forge read of the container it started (over its own
    verified connection: the keys ``forge ssh`` and ``ssh ENV`` check from now on), and write
    the ``~/.ssh/config`` block when asked or when one is kept already (a block forge manages
    follows its environment). Returns the way in and the config written, if any."""
    known = sshconfig.pin_keys(result.env, result.host_keys)
    way = access(host, env=result.env, port=result.port, user=result.user, known_hosts=known)
    config = None
    if manage_config or sshconfig.has_block(result.env):
        config = sshconfig.update(result.env, config_lines(way))
    return way, config


def ssh_argv(a: Access, command: list[str] | None = None, *, ssh: str = "ssh") -> list[str]:
    """``ssh`` into the environment (a login shell with X11, or ``command``), forge's rules on
    every hop; prompts allowed (a key's passphrase)."""
    argv = [ssh, *X11, *openssh.hop_options(a.route.hops, ssh, batch=False), "--", a.hop.hostname]
    if command:
        # ssh joins its arguments with spaces for the remote shell: send one string, quoted here.
        argv.append(shell.render(command))
    return argv


def display(a: Access) -> str:
    """The short line a person would type (``ssh -X ... -p PORT USER@HOST``, ``-J`` for jumps);
    ``forge ssh ENV`` is the one that checks every key."""
    hop = a.hop
    words = ["ssh", *X11]
    if a.route.jumps:
        words += ["-J", ",".join(f"{j.user}@{j.hostname}:{j.port}" for j in a.route.jumps)]
    words += ["-p", str(hop.port), f"{hop.user}@{hop.hostname}"]
    return shell.display(words)


def config_lines(a: Access) -> list[str]:
    """The ``~/.ssh/config`` lines of a managed ``Host ENV`` block (after the Host line)."""
    hop = a.hop
    lines = [
        f"HostName {hop.hostname}",
        f"Port {hop.port}",
        f"User {hop.user}",
        "ForwardX11 yes",
        "ForwardX11Trusted no",
        "ForwardAgent no",
        f"HostKeyAlias {hop.key_alias}",
        f"UserKnownHostsFile {' '.join(_config_word(str(f)) for f in hop.known_hosts)}",
        "StrictHostKeyChecking yes",
    ]
    lines += [f"IdentityFile {_config_word(i)}" for i in hop.identity_files]
    proxy = openssh.proxy_command(a.route.hops, "ssh", batch=False)
    if proxy:
        lines.append(f"ProxyCommand {proxy}")
    return lines


def _config_word(value: str) -> str:
    return '"' + value.replace("%", "%%") + '"'

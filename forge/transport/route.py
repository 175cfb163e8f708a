"""The way to a host: its jump hosts and itself, each with the rules its key is checked by.

forge reads the OpenSSH client config itself (``ssh_config`` in hosts.toml, else
``~/.ssh/config``) with paramiko's parser and resolves, for the host and for every jump host
on the way to it (``ProxyJump``, recursively for the first jump, as ``ssh`` does):
``HostName``, ``Port``, ``User``, ``IdentityFile``, ``HostKeyAlias``, ``UserKnownHostsFile``,
``GlobalKnownHostsFile``, ``StrictHostKeyChecking`` and ``ProxyCommand``. Both of forge's
pipes (paramiko for commands, the ``ssh`` client for bulk streams) connect along the same
:class:`Route`, so every hop's key is checked by the same files and policy.

The inventory wins over the config for the host itself (user, port, identity file,
known_hosts, host_key_policy). A jump host's key is checked like any host's: unknown keys
are rejected unless its config says ``StrictHostKeyChecking accept-new`` (or ``no``: forge
still refuses a changed key), and a changed key is always refused.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import paramiko

from forge.errors import ConfigError
from forge.inventory import Host, HostKeyPolicy
from forge.transport import knownhosts

MAX_HOPS = 8
_DEFAULT_USER_FILES = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
_DEFAULT_GLOBAL_FILES = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
_JUMP = re.compile(r"^(?:ssh://)?(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]\s]+\]|[^:@\s\[\]]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Hop:
    """One SSH server on the way: a jump host, or the host itself (the last hop)."""

    label: str  # the name it was asked by (inventory name or ProxyJump word), for messages
    hostname: str  # where to connect
    port: int
    user: str
    identity_files: tuple[str, ...] = ()  # empty: the agent and the default keys
    known_hosts: tuple[Path, ...] = ()  # read in order; accept-new appends to the first
    policy: HostKeyPolicy = "strict"
    key_alias: str | None = None  # HostKeyAlias
    proxy_command: str | None = None  # the config's ProxyCommand (first hop only)

    @property
    def lookup(self) -> str:
        """The name its key is looked up by in known_hosts."""
        return knownhosts.lookup_name(self.hostname, self.port, self.key_alias)

    @property
    def where(self) -> str:
        return f"{self.hostname}:{self.port}"


@dataclass(frozen=True)
class Route:
    """The hops to a host in connection order: jump hosts first, the host itself last."""

    hops: tuple[Hop, ...]

    @property
    def target(self) -> Hop:
        return self.hops[-1]

    @property
    def jumps(self) -> tuple[Hop, ...]:
        return self.hops[:-1]


_NO_CONFIG = paramiko.SSHConfig()  # no ~/.ssh/config: one empty config (lookups never change it)


@lru_cache(maxsize=16)
def _parsed(path: str, mtime_ns: int) -> paramiko.SSHConfig:
    try:
        return paramiko.SSHConfig.from_path(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the SSH client config {path}: {e}") from e
    except Exception as e:  # paramiko raises plain exceptions for bad lines
        raise ConfigError(f"cannot parse the SSH client config {path}: {e}") from e


def load_config(path: str | None) -> paramiko.SSHConfig:
    """The SSH client config forge reads: the inventory's ``ssh_config``, else
    ``~/.ssh/config``; an empty one when the default file does not exist."""
    p = Path(path).expanduser() if path else Path("~/.ssh/config").expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        if path:
            raise ConfigError(f"the SSH client config {p} (ssh_config in hosts.toml) does not exist") from None
        return _NO_CONFIG
    return _parsed(str(p), st.st_mtime_ns)


def resolve(host: Host, config: paramiko.SSHConfig | None = None) -> Route:
    """The route to ``host``. Pure given the config (and the local user name and home), so
    worked out once per process and config: paramiko's lookup costs about 20 us per ``Host``
    block of the config (it asks for the local user name at each), 2 ms with a fleet of 100
    hosts written in ``~/.ssh/config``, on every connection."""
    cfg = config if config is not None else load_config(host.ssh_config)
    return _resolve(host, cfg, os.path.expanduser("~"), getpass.getuser())


@lru_cache(maxsize=1024)
def _resolve(host: Host, cfg: paramiko.SSHConfig, home: str, local_user: str) -> Route:
    """:func:`resolve`, kept per host, config, home and local user (what it depends on)."""
    name = host.ssh_target
    opts = cfg.lookup(name)
    target = _hop(
        host.name,
        opts,
        name=name,
        user=host.user,
        port=host.port,
        identity=(host.identity_file,) if host.identity_file else None,
        known_hosts=host.known_hosts,
        policy=host.host_key_policy,
    )
    jumps = _proxied(cfg, host, opts, depth=0)
    if not jumps and _proxy_command(opts):
        target = _with_proxy_command(target, opts)
    return Route((*jumps, target))


def _proxied(cfg: paramiko.SSHConfig, host: Host, opts: dict[str, Any], *, depth: int) -> tuple[Hop, ...]:
    """The jump hosts in front of a host whose config is ``opts``."""
    spec = str(opts.get("proxyjump") or "").strip()
    if not spec or spec.lower() == "none":
        return ()
    if depth >= MAX_HOPS:
        raise ConfigError(f"ProxyJump for {host.name} nests more than {MAX_HOPS} jump hosts (a loop?)")
    hops: list[Hop] = []
    for i, word in enumerate(w.strip() for w in spec.split(",")):
        m = _JUMP.match(word)
        if not m:
            raise ConfigError(f"cannot read the jump host {word!r} in ProxyJump for {host.name}")
        jname = m.group("host").strip("[]")
        jopts = cfg.lookup(jname)
        hop = _hop(
            f"jump host {word}",
            jopts,
            name=jname,
            user=m.group("user"),
            port=int(m.group("port")) if m.group("port") else None,
            identity=None,
            known_hosts=host.known_hosts,
            policy="strict",
            fallback_identity=host.identity_file,
        )
        if i == 0:  # the first jump is reached the way its own config says
            front = _proxied(cfg, host, jopts, depth=depth + 1)
            if not front and _proxy_command(jopts):
                hop = _with_proxy_command(hop, jopts)
            hops += front
        hops.append(hop)
    if len(hops) > MAX_HOPS:
        raise ConfigError(f"the way to {host.name} has more than {MAX_HOPS} jump hosts")
    return tuple(hops)


def _hop(
    label: str,
    opts: dict[str, Any],
    *,
    name: str,
    user: str | None,
    port: int | None,
    identity: tuple[str, ...] | None,
    known_hosts: str | None,
    policy: HostKeyPolicy,
    fallback_identity: str | None = None,
) -> Hop:
    hostname = str(opts.get("hostname") or name)
    port = port or _port(opts.get("port"), label)
    user = user or opts.get("user") or getpass.getuser()
    if identity is None:
        identity = tuple(opts.get("identityfile") or ()) or ((fallback_identity,) if fallback_identity else ())
    tokens = {"h": hostname, "p": str(port), "r": user, "n": name}
    return Hop(
        label=label,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=tuple(os.path.expanduser(i) for i in identity),
        known_hosts=known_hosts_files(known_hosts, opts, tokens, label),
        policy="accept-new" if policy == "accept-new" else _config_policy(opts),
        key_alias=opts.get("hostkeyalias") or None,
    )


def _port(value: Any, label: str) -> int:
    if value is None:
        return 22
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"Port {value!r} in the SSH client config of {label} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"Port {port} in the SSH client config of {label} is not a TCP port")
    return port


def _config_policy(opts: dict[str, Any]) -> HostKeyPolicy:
    """A host opts into recording unknown keys with StrictHostKeyChecking accept-new (or no,
    off): forge still refuses a changed key, whatever the config says."""
    value = str(opts.get("stricthostkeychecking") or "").strip().lower()
    return "accept-new" if value in ("accept-new", "no", "off") else "strict"


def _proxy_command(opts: dict[str, Any]) -> str | None:
    command = str(opts.get("proxycommand") or "").strip()
    return None if not command or command.lower() == "none" else command


def _with_proxy_command(hop: Hop, opts: dict[str, Any]) -> Hop:
    from dataclasses import replace

    return replace(hop, proxy_command=_proxy_command(opts))


def known_hosts_files(
    explicit: str | None, opts: dict[str, Any], tokens: dict[str, str], label: str
) -> tuple[Path, ...]:
    """The inventory's known_hosts when set; else the config's UserKnownHostsFile and
    GlobalKnownHostsFile (each a list, quoted as in ssh_config, ``none`` for none), with
    OpenSSH's defaults for what the config leaves unset."""
    if explicit:
        return (Path(explicit).expanduser(),)
    files: list[Path] = []
    for key, default in (("userknownhostsfile", _DEFAULT_USER_FILES), ("globalknownhostsfile", _DEFAULT_GLOBAL_FILES)):
        raw = opts.get(key)
        words = split_words(str(raw), key, label) if raw else list(default)
        if [w.lower() for w in words] == ["none"]:
            continue
        files += [Path(expand_tokens(w, tokens, key, label)).expanduser() for w in words]
    return tuple(dict.fromkeys(files))


def split_words(value: str, key: str, label: str) -> list[str]:
    """A config value holding several paths, split as ssh splits it (quotes allowed)."""
    try:
        return shlex.split(value, posix=True)
    except ValueError as e:
        raise ConfigError(f"cannot read {key} {value!r} in the SSH client config of {label}: {e}") from None


def expand_tokens(value: str, tokens: dict[str, str], key: str, label: str) -> str:
    """OpenSSH's %-tokens in a path: %% %d %u and the host's %h %p %r %n."""
    table = {"%": "%", "d": str(Path.home()), "u": getpass.getuser(), **tokens}

    def one(m: re.Match[str]) -> str:
        token = m.group(1)
        if token not in table:
            raise ConfigError(f"forge cannot expand %{token} in {key} of {label}")
        return table[token]

    return re.sub(r"%(.)", one, value)

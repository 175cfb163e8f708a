"""The inventory: which hosts forge manages, how to reach them, and the environment it runs.

Loaded once from ``hosts.toml`` and validated as a whole: every mistake is an
:class:`~forge.errors.InventoryError` naming the file, the host and the key. The file is found
by :func:`find_inventory`; without one forge manages the local machine only.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from forge.errors import InventoryError, TargetError

HostKeyPolicy = Literal["strict", "accept-new"]

#: Keys that would put a secret in the inventory. Checked anywhere in the file.
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret")

LOCAL_NAME = "local"


@dataclass(frozen=True)
class GpuPolicySettings:
    """Overrides of the free-GPU policy (see :mod:`forge.gpu.policy`); None = not set here."""

    max_memory_used_mib: int | None = None
    max_utilization_pct: int | None = None
    max_foreign_processes: int | None = None

    def as_overrides(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class HostSettings:
    """Connection and per-host settings; ``[defaults]`` holds the same keys."""

    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    host_key_policy: HostKeyPolicy | None = None
    ssh_config: str | None = None
    connect_timeout: float | None = None
    command_timeout: float | None = None
    docker_host: str | None = None
    gpu_policy: GpuPolicySettings = field(default_factory=GpuPolicySettings)


@dataclass(frozen=True)
class Host:
    """One server of the fleet, with [defaults] already applied."""

    name: str
    address: str
    local: bool = False
    ssh_alias: str | None = None
    tags: tuple[str, ...] = ()
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    host_key_policy: HostKeyPolicy = "strict"
    ssh_config: str | None = None  # the OpenSSH client config to read; None: ~/.ssh/config
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    docker_host: str | None = None
    gpu_policy: GpuPolicySettings = field(default_factory=GpuPolicySettings)  # this host's overrides

    @property
    def ssh_target(self) -> str:
        """The name handed to SSH: the ~/.ssh/config alias when given, else the address."""
        return self.ssh_alias or self.address

    def describe(self) -> str:
        if self.local:
            return "local"
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{who}{self.ssh_target}{port}"


@dataclass(frozen=True)
class DataSettings:
    """The data host: one copy of datasets and code, mounted into containers everywhere."""

    address: str | None = None
    user: str | None = None
    port: int = 22
    path: str | None = None
    identity_file: str | None = None  # path on the GPU hosts
    known_hosts: str | None = None  # path on the GPU hosts
    volume: str = "forge-data"
    driver: Literal["sshfs", "rclone", "vieux-sshfs"] = "sshfs"
    marker: str | None = None  # a file under path that `forge migrate` reads to check the volume


@dataclass(frozen=True)
class EnvironmentSettings:
    """The dev container forge launches: everything `forge migrate` needs, no flags."""

    name: str = "dev"
    image: str | None = None
    images: tuple[str, ...] = ()  # more images `forge sync` keeps current on every host
    ssh_port: int = 0  # 0 = pick a free port in ssh_port_range
    ssh_port_range: tuple[int, int] = (2200, 2299)
    user: str | None = None  # the user inside the container; default: the local user
    hostname: str | None = None  # default: the environment's name
    mount: str = "/data"
    gpus: int = 1
    min_free_memory_mib: int = 0
    shm_size: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistorySettings:
    """Where `forge record` keeps the fleet's usage, and for how long (see docs/history.md)."""

    path: str | None = None  # default: $XDG_DATA_HOME/forge/history.sqlite
    keep_samples: str = "2d"  # every sample, as recorded
    keep_hours: str = "90d"  # sums per hour
    keep_days: str = "5y"  # sums per day
    max_gap: str = "5m"  # a sample counts for the time since the one before, up to this
    idle_utilization_pct: int = 5  # a held GPU below this utilization is idle

    def seconds(self, key: str) -> float:
        """A duration setting in seconds (checked when the inventory was loaded)."""
        from forge.durations import parse_duration

        return parse_duration(getattr(self, key))


@dataclass(frozen=True)
class PolicySettings:
    """How the fleet is shared (see docs/sharing.md): at most this many GPUs held per user."""

    max_gpus_per_user: int | None = None  # None: no quota
    max_gpus: Mapping[str, int] = field(default_factory=dict)  # per-user overrides of it
    waiter_timeout: str = "60s"  # a waiter that stops renewing its place in line loses it after this
    # Idle environments (forge reclaim): GPUs at most this busy, and no SSH session open ...
    idle_utilization_pct: int = 5
    idle_memory_mib: int = 1024
    idle_after: str | None = None  # ... for this long: the owner is warned (None: never)
    reclaim_after: str = "1h"  # ... and this long after the warning it is reclaimed

    @property
    def waiter_timeout_s(self) -> float:
        from forge.durations import parse_duration

        return parse_duration(self.waiter_timeout)

    def quota(self, user: str) -> int | None:
        """The most GPUs ``user`` may hold through forge environments (None: no limit)."""
        return self.max_gpus.get(user, self.max_gpus_per_user)


@dataclass(frozen=True)
class NotifySettings:
    """``[notify]``: a command run on the client for each event (see :mod:`forge.notify`)."""

    command: str | tuple[str, ...] | None = None  # a string runs with sh -c; a list is the argv


@dataclass(frozen=True)
class RegistrySettings:
    """``[registry]``: an existing registry for ``forge sync --via registry``. Hosts log in with
    docker's own credential store (``docker login ADDRESS`` on each); no secret is kept here."""

    address: str | None = None  # host[:port], as docker names it (e.g. "registry.lab:5000")
    namespace: str = "forge"  # the repository path forge pushes under


_REGISTRY = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_NAMESPACE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


#: The history settings that are durations, each with the least it may be.
HISTORY_DURATIONS = {"keep_samples": 7200.0, "keep_hours": 2 * 86400.0, "keep_days": 86400.0, "max_gap": 1.0}


@dataclass(frozen=True)
class Inventory:
    path: Path | None
    hosts: tuple[Host, ...]
    data: DataSettings = field(default_factory=DataSettings)
    environment: EnvironmentSettings = field(default_factory=EnvironmentSettings)
    gpu_policy: GpuPolicySettings = field(default_factory=GpuPolicySettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise TargetError(f"no host named {name!r} in {self.source}", hint=_suggest(name, self.names))

    def here(self, name: str | None = None) -> Host:
        """The host ``name``; without one, this machine (the inventory's local host, else one
        without SSH): where images are built and read from by default."""
        if name:
            return self.host(name)
        local = next((h for h in self.hosts if h.local), None)
        return local or Host(name=LOCAL_NAME, address="localhost", local=True)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "the built-in local inventory"

    def select(self, targets: Sequence[str] | str | None) -> list[Host]:
        """Hosts matching targets: ``all`` (or nothing), host names, tags, comma lists."""
        if targets is None:
            return list(self.hosts)
        if isinstance(targets, str):
            targets = [targets]
        wanted: list[str] = [t.strip() for item in targets for t in item.split(",") if t.strip()]
        if not wanted:
            # An empty --to (e.g. from an unset shell variable) must not mean "every host".
            raise TargetError("no host named: give host names, tags or 'all'")
        if "all" in wanted:
            return list(self.hosts)
        chosen: list[Host] = []
        for word in wanted:
            matched = [h for h in self.hosts if h.name == word or word in h.tags]
            if not matched:
                known = self.names + sorted({t for h in self.hosts for t in h.tags}) + ["all"]
                raise TargetError(
                    f"{word!r} is neither a host nor a tag in {self.source}",
                    hint=_suggest(word, known),
                )
            chosen.extend(h for h in matched if h not in chosen)
        return chosen


# --------------------------------------------------------------------------- discovery


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "forge"


def find_inventory(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """``--inventory PATH``, then ``$FORGE_INVENTORY``, then ``./hosts.toml``, then the
    user's config dir (``~/.config/forge/hosts.toml``). None: no inventory, local host only.

    An explicitly named file (flag or variable) that does not exist is an error.
    """
    for given, how in ((explicit, "--inventory"), (os.environ.get("FORGE_INVENTORY"), "FORGE_INVENTORY")):
        if given:
            p = Path(given).expanduser()
            if not _is_file(p):
                raise InventoryError(f"no such inventory file (from {how})", path=str(p))
            return p
    for p in (Path.cwd() / "hosts.toml", user_config_dir() / "hosts.toml"):
        if _is_file(p):
            return p
    return None


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except PermissionError as e:  # a directory on the way this user may not enter
        raise InventoryError(f"cannot read the file: {e.strerror}", path=str(p)) from e


def local_inventory() -> Inventory:
    """The inventory used when there is no hosts.toml: this machine, no SSH."""
    return Inventory(path=None, hosts=(Host(name=LOCAL_NAME, address="localhost", local=True),))


def load(explicit: str | os.PathLike[str] | None = None) -> Inventory:
    path = find_inventory(explicit)
    if path is None:
        return local_inventory()
    return load_file(path)


def load_file(path: Path) -> Inventory:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InventoryError(f"cannot read the file: {e.strerror}", path=str(path)) from e
    except UnicodeDecodeError as e:
        raise InventoryError("the file is not UTF-8 text", path=str(path)) from e
    return parse(text, path=path)


def parse(text: str, *, path: Path | None = None) -> Inventory:
    where = str(path) if path else "<inventory>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(f"not valid TOML: {e}", path=where) from e
    return _Validator(where).inventory(doc, path)


# --------------------------------------------------------------------------- validation


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    import difflib  # only for a broken inventory: not on every command's start-up

    candidates = list(candidates)
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [c for c in candidates if c.startswith(word)][:1]
    return f"did you mean {close[0]!r}?" if close else None


_HOST_ONLY = {"name", "address", "local", "ssh_alias", "tags"}
_SETTING_KEYS = [f.name for f in fields(HostSettings)]


class _Validator:
    def __init__(self, where: str) -> None:
        self.where = where

    def error(
        self, msg: str, *, host: str | None = None, key: str | None = None, hint: str | None = None
    ) -> InventoryError:
        return InventoryError(msg, path=self.where, host=host, key=key, hint=hint)

    # -- generic checks

    def no_secrets(self, doc: Any, trail: str = "", host: str | None = None) -> None:
        if isinstance(doc, dict):
            for k, v in doc.items():
                here = f"{trail}.{k}" if trail else k
                if any(w in k.lower() for w in _SECRET_WORDS):
                    raise self.error(
                        "passwords and secrets are not accepted in the inventory",
                        host=host,
                        key=here,
                        hint="use an SSH key (identity_file) or the SSH agent",
                    )
                self.no_secrets(v, here, host)
        elif isinstance(doc, list):
            for i, v in enumerate(doc):
                h = host
                if trail == "hosts" and isinstance(v, dict) and isinstance(v.get("name"), str):
                    h = v["name"]
                self.no_secrets(v, f"{trail}[{i}]", h)

    def unknown(self, table: Mapping[str, Any], allowed: Iterable[str], *, host: str | None, prefix: str = "") -> None:
        allowed = list(allowed)
        for k in table:
            if k not in allowed:
                raise self.error("unknown key", host=host, key=prefix + k, hint=_suggest(k, allowed))

    def typed(self, value: Any, tp: Any, *, host: str | None, key: str) -> Any:
        """Check ``value`` against a dataclass field type; return it converted (lists→tuples)."""
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            return self.typed(value, inner[0], host=host, key=key)
        if origin is Literal:
            if value not in args:
                raise self.error(
                    f"must be one of {', '.join(repr(a) for a in args)}, not {value!r}",
                    host=host,
                    key=key,
                    hint=_suggest(str(value), [str(a) for a in args]),
                )
            return value
        if origin is tuple:
            if not isinstance(value, list):
                raise self.error(f"must be a list, not {_tname(value)}", host=host, key=key)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self.typed(v, args[0], host=host, key=f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise self.error(f"must be a list of {len(args)} items", host=host, key=key)
            return tuple(
                self.typed(v, a, host=host, key=f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(f"must be true or false, not {_tname(value)}", host=host, key=key)
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(f"must be an integer, not {_tname(value)}", host=host, key=key)
            if value < 0:
                raise self.error(f"must not be negative, got {value}", host=host, key=key)
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.error(f"must be a number, not {_tname(value)}", host=host, key=key)
            if value <= 0:
                raise self.error(f"must be positive, got {value}", host=host, key=key)
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise self.error(f"must be a string, not {_tname(value)}", host=host, key=key)
            if not value.strip():
                raise self.error("must not be empty", host=host, key=key)
            return value
        raise AssertionError(f"unsupported field type {tp!r}")  # pragma: no cover

    def table(self, doc: Any, cls: type, *, host: str | None, key: str, skip: Iterable[str] = ()) -> dict[str, Any]:
        """Validate a TOML table against a dataclass; return constructor kwargs."""
        if not isinstance(doc, dict):
            raise self.error(f"must be a table, not {_tname(doc)}", host=host, key=key or None)
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls) if f.name not in set(skip)]
        prefix = f"{key}." if key else ""
        self.unknown(doc, names, host=host, prefix=prefix)
        out: dict[str, Any] = {}
        for k, v in doc.items():
            if hints[k] is GpuPolicySettings:
                out[k] = GpuPolicySettings(**self.table(v, GpuPolicySettings, host=host, key=prefix + k))
            else:
                out[k] = self.typed(v, hints[k], host=host, key=prefix + k)
        return out

    # -- the document

    def inventory(self, doc: dict[str, Any], path: Path | None) -> Inventory:
        self.no_secrets(doc)
        top = ["defaults", "hosts", "data", "environment", "gpu_policy", "history", "policy", "notify", "registry"]
        self.unknown(doc, top, host=None)
        # The fleet-wide GPU policy is the top-level [gpu_policy] table, not [defaults].
        defaults = HostSettings(
            **self.table(doc.get("defaults", {}), HostSettings, host=None, key="defaults", skip=["gpu_policy"])
        )
        gpu_policy = GpuPolicySettings(
            **self.table(doc.get("gpu_policy", {}), GpuPolicySettings, host=None, key="gpu_policy")
        )
        data = DataSettings(**self.table(doc.get("data", {}), DataSettings, host=None, key="data"))
        env = EnvironmentSettings(
            **self.table(doc.get("environment", {}), EnvironmentSettings, host=None, key="environment")
        )
        history = self.history(doc.get("history", {}))
        policy = self.policy(doc.get("policy", {}))
        notify = self.notify(doc.get("notify", {}))
        registry = self.registry(doc.get("registry", {}))
        lo, hi = env.ssh_port_range
        if not 1 <= lo <= hi <= 65535:
            raise self.error("must be [low, high] with 1 <= low <= high <= 65535", key="environment.ssh_port_range")
        if (data.address is None) != (data.path is None):
            missing = "data.path" if data.path is None else "data.address"
            raise self.error("is required when the [data] table names a data host", key=missing)

        raw_hosts = doc.get("hosts")
        if raw_hosts is None:
            raise self.error(
                "no hosts: add [[hosts]] tables with at least a name and an address",
                key="hosts",
            )
        if not isinstance(raw_hosts, list):
            raise self.error("must be an array of tables: write [[hosts]], not [hosts]", key="hosts")
        hosts: list[Host] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_hosts):
            name = raw.get("name") if isinstance(raw, dict) else None
            label = name if isinstance(name, str) else f"#{i + 1}"
            h = self.host(raw, label, defaults)
            if h.name in seen:
                raise self.error(
                    f"duplicate host name (hosts #{seen[h.name] + 1} and #{i + 1})", host=h.name, key="name"
                )
            seen[h.name] = i
            hosts.append(h)
        if not hosts:
            raise self.error("no hosts: add [[hosts]] tables with at least a name and an address", key="hosts")
        return Inventory(
            path=path,
            hosts=tuple(hosts),
            data=data,
            environment=env,
            gpu_policy=gpu_policy,
            history=history,
            policy=policy,
            notify=notify,
            registry=registry,
        )

    def registry(self, doc: Any) -> RegistrySettings:
        settings = RegistrySettings(**self.table(doc, RegistrySettings, host=None, key="registry"))
        if settings.address is not None and not _REGISTRY.match(settings.address):
            raise self.error("must be a registry's host[:port], as docker names it", key="registry.address")
        if not _NAMESPACE.match(settings.namespace):
            raise self.error("must be a repository path: lower-case words joined by / . _ -", key="registry.namespace")
        return settings

    def policy(self, doc: Any) -> PolicySettings:
        """``[policy]``: ``max_gpus_per_user`` and a ``[policy.max_gpus]`` table of user = GPUs."""
        if not isinstance(doc, dict):
            raise self.error(f"must be a table, not {_tname(doc)}", key="policy")
        idle_keys = ["idle_utilization_pct", "idle_memory_mib", "idle_after", "reclaim_after"]
        self.unknown(doc, ["max_gpus_per_user", "max_gpus", "waiter_timeout", *idle_keys], host=None, prefix="policy.")
        fleet = doc.get("max_gpus_per_user")
        if fleet is not None:
            fleet = self.typed(fleet, int, host=None, key="policy.max_gpus_per_user")
        users = doc.get("max_gpus", {})
        if not isinstance(users, dict):
            raise self.error(f"must be a table of user = GPUs, not {_tname(users)}", key="policy.max_gpus")
        per_user = {u: self.typed(n, int, host=None, key=f"policy.max_gpus.{u}") for u, n in users.items()}
        waiter = self.typed(doc.get("waiter_timeout", "60s"), str, host=None, key="policy.waiter_timeout")
        settings = PolicySettings(max_gpus_per_user=fleet, max_gpus=per_user, waiter_timeout=waiter, **self.idle(doc))
        try:
            seconds = settings.waiter_timeout_s
        except ValueError as e:
            raise self.error(str(e), key="policy.waiter_timeout") from None
        if not 2 <= seconds <= 3600:
            raise self.error("must be from 2s to 1h", key="policy.waiter_timeout")
        return settings

    def idle(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The idle-environment keys of ``[policy]`` (forge reclaim), checked."""
        from forge.durations import parse_duration

        out: dict[str, Any] = {}
        for key, top in (("idle_utilization_pct", 100), ("idle_memory_mib", 10**7)):
            if key in doc:
                out[key] = self.typed(doc[key], int, host=None, key=f"policy.{key}")
                if not 0 <= out[key] <= top:
                    raise self.error(f"must be from 0 to {top}", key=f"policy.{key}")
        for key in ("idle_after", "reclaim_after"):
            if key in doc:
                out[key] = self.typed(doc[key], str, host=None, key=f"policy.{key}")
                try:
                    parse_duration(out[key])
                except ValueError as e:
                    raise self.error(str(e), key=f"policy.{key}") from None
        return out

    def notify(self, doc: Any) -> NotifySettings:
        """``[notify]``: ``command``, a string (run with sh -c) or a non-empty list of strings."""
        if not isinstance(doc, dict):
            raise self.error(f"must be a table, not {_tname(doc)}", key="notify")
        self.unknown(doc, ["command"], host=None, prefix="notify.")
        command = doc.get("command")
        if command is None:
            return NotifySettings()
        if isinstance(command, list):
            argv = self.typed(command, tuple[str, ...], host=None, key="notify.command")
            if not argv:
                raise self.error("must not be empty", key="notify.command")
            return NotifySettings(argv)
        return NotifySettings(self.typed(command, str, host=None, key="notify.command"))

    def history(self, doc: Any) -> HistorySettings:
        from forge.durations import format_duration, parse_duration

        settings = HistorySettings(**self.table(doc, HistorySettings, host=None, key="history"))
        for key, least in HISTORY_DURATIONS.items():
            try:
                seconds = parse_duration(getattr(settings, key))
            except ValueError as e:
                raise self.error(str(e), key=f"history.{key}") from None
            if seconds < least:
                raise self.error(f"must be at least {format_duration(least)}", key=f"history.{key}")
        if settings.idle_utilization_pct > 100:
            raise self.error("must be a percentage (0 to 100)", key="history.idle_utilization_pct")
        return settings

    def host(self, raw: Any, label: str, defaults: HostSettings) -> Host:
        if not isinstance(raw, dict):
            raise self.error(f"must be a table, not {_tname(raw)}", host=label)
        allowed = list(_HOST_ONLY) + _SETTING_KEYS
        self.unknown(raw, allowed, host=label)
        for required in ("name",):
            if required not in raw:
                raise self.error("missing required key", host=label, key=required)
        hints = typing.get_type_hints(Host)
        kw: dict[str, Any] = {}
        for k, v in raw.items():
            if k == "gpu_policy":
                kw[k] = GpuPolicySettings(**self.table(v, GpuPolicySettings, host=label, key="gpu_policy"))
            else:
                kw[k] = self.typed(v, hints[k], host=label, key=k)
        name = kw["name"]
        if name in ("all",) or "," in name or name.strip() != name:
            raise self.error("must not be 'all' or contain commas or spaces", host=name, key="name")
        if kw.get("local"):
            kw.setdefault("address", "localhost")
        elif "address" not in kw and "ssh_alias" not in kw:
            raise self.error("missing required key (or give ssh_alias, or local = true)", host=name, key="address")
        kw.setdefault("address", kw.get("ssh_alias", ""))
        # [defaults] fill what the host leaves unset.
        for k in _SETTING_KEYS:
            if k == "gpu_policy":
                continue
            if k not in kw and getattr(defaults, k) is not None:
                kw[k] = getattr(defaults, k)
        if "port" in kw and not 1 <= kw["port"] <= 65535:
            raise self.error(f"must be a TCP port (1-65535), got {kw['port']}", host=name, key="port")
        return Host(**kw)


def _tname(value: Any) -> str:
    return {
        dict: "a table",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)

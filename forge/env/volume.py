"""The data volume: a Docker volume on a GPU host that reads the data host's directory over SSH.

Three drivers, chosen with ``[data].driver``:

- ``sshfs`` (default): forge mounts the data host's directory with ``sshfs`` on the GPU host,
  as the SSH user, with strict host-key checking against ``[data].known_hosts`` and the key
  ``[data].identity_file``, and file modes enforced for the host's other users
  (``default_permissions``); the volume is a ``local`` bind volume of that mount point. Nothing
  but paths shows in ``docker volume inspect``; no Docker plugin is needed; a dead mount is
  seen and remounted.
- ``rclone``: the rclone Docker volume plugin with its sftp backend. forge refuses it without
  ``[data].known_hosts`` (rclone checks no host key without ``known_hosts_file``).
- ``vieux-sshfs``: the ``vieux/sshfs`` plugin people already use. Unmaintained since 2018, it
  runs ssh with ``StrictHostKeyChecking=no`` (first option wins), so it cannot verify the data
  host. Built for compatibility, never the default.

Keys only: any option that looks like a password is refused, because every volume option is
shown by ``docker volume inspect`` to anyone who can run docker on the host (and a password
stayed in the daemon's metadata after ``docker volume rm``).

A volume's name is ``[data].volume`` plus the SSH user (``forge-data-alice``): the mount is made
with that user's key, and volume names are shared by everyone on a host.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from forge import shell
from forge.env.errors import VolumeError
from forge.errors import CommandFailed, ForgeError
from forge.inventory import DataSettings
from forge.session import HostSession

Driver = Literal["sshfs", "rclone", "vieux-sshfs"]
VIEUX_PLUGIN = "vieux/sshfs"
VIEUX_KEY_DIR = "/root/.ssh"  # where the plugin sees the directory given as sshkey.source
CHECK_MOUNT = "/forge-check"
DEAD_MOUNT = "Transport endpoint is not connected"


@dataclass(frozen=True)
class VolumeSpec:
    """Everything needed to build a host's data volume; pure data, built by :func:`spec_for`."""

    name: str
    driver: Driver
    address: str
    path: str
    user: str | None = None
    port: int = 22
    identity_file: str | None = None  # on the GPU host
    known_hosts: str | None = None  # on the GPU host
    mountpoint: str | None = None  # sshfs only: where the host-side mount lives
    options: Mapping[str, str] = field(default_factory=dict)  # extra driver options

    @property
    def remote(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"{who}{self.address}:{self.path}"


def volume_name(data: DataSettings, user: str) -> str:
    return f"{data.volume}-{user}"


def mountpoint_for(home: str, host_name: str, volume: str) -> str:
    """Under the user's home, named after the host too: homes are often shared over NFS."""
    return posixpath.join(home, ".forge", "mnt", f"{host_name}-{volume}")


def refuse_passwords(options: Mapping[str, str]) -> None:
    """Volume options are shown by ``docker volume inspect``: never a password among them."""
    for key in options:
        if "pass" in key.lower() or "secret" in key.lower():
            raise VolumeError(
                "-",
                f"volume option {key!r} would carry a password: forge mounts the data host with SSH keys only",
                hint="every volume option is shown by `docker volume inspect` to anyone with docker access; "
                "set [data].identity_file to a key on the GPU hosts",
            )


def spec_for(
    data: DataSettings,
    *,
    host_name: str,
    user: str,
    home: str,
    options: Mapping[str, str] | None = None,
) -> VolumeSpec:
    """The volume for ``user`` on host ``host_name`` (``home``: the user's home there)."""
    if not data.address or not data.path:
        raise VolumeError(host_name, "no data host: set [data] address and path in hosts.toml")
    opts = dict(options or {})
    refuse_passwords(opts)
    name = volume_name(data, user)
    return VolumeSpec(
        name=name,
        driver=data.driver,
        address=data.address,
        path=data.path,
        user=data.user,
        port=data.port,
        identity_file=data.identity_file,
        known_hosts=data.known_hosts,
        mountpoint=mountpoint_for(home, host_name, name) if data.driver == "sshfs" else None,
        options=opts,
    )


# --------------------------------------------------------------------------- argv (pure)


def _no_commas(spec: VolumeSpec, *values: str | None) -> None:
    for v in values:
        if v and "," in v:
            raise VolumeError("-", f"{v!r} contains a comma, which sshfs's -o option list cannot carry")


def sshfs_argv(spec: VolumeSpec) -> list[str]:
    """``sshfs -o ... USER@ADDR:PATH`` (the mount point is appended by the mount script)."""
    _no_commas(spec, spec.identity_file, spec.known_hosts)
    opts = ["StrictHostKeyChecking=yes", "BatchMode=yes"]
    if spec.known_hosts:
        opts.append(f"UserKnownHostsFile={spec.known_hosts}")
    if spec.identity_file:
        opts += [f"IdentityFile={spec.identity_file}", "IdentitiesOnly=yes"]
    # allow_other: the Docker daemon (root) must reach the mount to bind it into containers.
    # default_permissions: the kernel then checks every access against the files' modes, as on
    # a local disk; without it any local user of the GPU host could read and write through the
    # mount as its owner. idmap=user: the data host user's files show as the mounting user's,
    # so the container (run as that uid) keeps its access and nobody else gets it.
    opts += ["allow_other", "default_permissions", "idmap=user"]
    opts += ["reconnect", "ServerAliveInterval=15", "ServerAliveCountMax=3", "ConnectTimeout=10"]
    if spec.port != 22:
        opts.append(f"port={spec.port}")
    opts += [f"{k}={v}" if v else k for k, v in spec.options.items()]
    return ["sshfs", "-o", ",".join(opts), spec.remote]


def local_bind_options(mountpoint: str) -> dict[str, str]:
    return {"type": "none", "o": "bind", "device": mountpoint}


def rclone_options(spec: VolumeSpec) -> dict[str, str]:
    if not spec.known_hosts:
        raise VolumeError(
            "-",
            "the rclone driver needs [data].known_hosts: without known_hosts_file rclone checks no host key",
        )
    opts = {"type": "sftp", "sftp-host": spec.address, "sftp-port": str(spec.port)}
    if spec.user:
        opts["sftp-user"] = spec.user
    if spec.identity_file:
        opts["sftp-key-file"] = spec.identity_file
    opts["sftp-known-hosts-file"] = spec.known_hosts
    opts["path"] = spec.path
    opts["allow-other"] = "true"
    opts.update(spec.options)
    return opts


def vieux_install_args(spec: VolumeSpec) -> list[str]:
    """``docker`` arguments that install the plugin once per host, giving it the key's directory."""
    if not spec.identity_file:
        raise VolumeError("-", "the vieux-sshfs driver needs [data].identity_file (it never takes passwords)")
    keydir = posixpath.dirname(spec.identity_file)
    return ["plugin", "install", "--grant-all-permissions", VIEUX_PLUGIN, f"sshkey.source={keydir}"]


def vieux_options(spec: VolumeSpec) -> dict[str, str]:
    if not spec.identity_file:
        raise VolumeError("-", "the vieux-sshfs driver needs [data].identity_file (it never takes passwords)")
    opts = {
        "sshcmd": spec.remote,
        "port": str(spec.port),
        "IdentityFile": posixpath.join(VIEUX_KEY_DIR, posixpath.basename(spec.identity_file)),
        "allow_other": "",
    }
    opts.update(spec.options)
    return opts


def driver_options(spec: VolumeSpec) -> tuple[str, dict[str, str]]:
    """(docker volume driver, its options) for ``spec``."""
    if spec.driver == "sshfs":
        assert spec.mountpoint is not None
        return "local", local_bind_options(spec.mountpoint)
    if spec.driver == "rclone":
        return "rclone", rclone_options(spec)
    return VIEUX_PLUGIN, vieux_options(spec)


def create_args(spec: VolumeSpec) -> list[str]:
    """``docker`` arguments ``volume create --driver D -o K=V ... NAME``."""
    driver, opts = driver_options(spec)
    refuse_passwords(opts)
    argv = ["volume", "create", "--driver", driver]
    for k, v in opts.items():
        argv += ["-o", f"{k}={v}" if v else k]
    return [*argv, spec.name]


def check_args(spec: VolumeSpec, *, image: str, uid: int, gid: int, marker: str | None) -> list[str]:
    """``docker`` arguments of a throwaway container, as the user, that reads the marker file
    (or lists the root)."""
    base = ["run", "--rm", "--network", "none", "-u", f"{uid}:{gid}", "-v", f"{spec.name}:{CHECK_MOUNT}:ro"]
    if marker:
        return [*base, "--entrypoint", "cat", image, posixpath.join(CHECK_MOUNT, marker)]
    return [*base, "--entrypoint", "ls", image, "-A", CHECK_MOUNT]


# Mount idempotently, as the SSH user: $1 = mount point, $2 = USER@HOST:PATH, then the sshfs
# argv. A mount of another source (the inventory changed) or a dead one is replaced.
MOUNT_SCRIPT = r"""
m=$1; src=$2; shift 2
if awk -v m="$m" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; then
  if awk -v m="$m" -v s="$src" '$2 == m && $1 == s { found = 1 } END { exit !found }' /proc/mounts \
     && timeout 20 ls "$m" >/dev/null 2>&1; then
    echo "forge-volume: alive"; exit 0
  fi
  echo "forge: $m is a dead mount or mounts another source; remounting it" >&2
  fusermount -u -z "$m" || { echo "forge: cannot unmount $m" >&2; exit 1; }
  state=remounted
else
  state=mounted
fi
mkdir -p "$m" || exit 1
"$@" "$m" || exit 1
echo "forge-volume: $state"
"""

UNMOUNT_SCRIPT = r"""
m=$1
if awk -v m="$m" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; then fusermount -u -z "$m" || exit 1; fi
rmdir "$m" 2>/dev/null
exit 0
"""


# --------------------------------------------------------------------------- on a host


@dataclass(frozen=True)
class VolumeState:
    name: str
    driver: Driver
    mountpoint: str | None
    mount: str  # sshfs: "alive", "mounted" or "remounted"; other drivers: "-"
    created: bool  # the docker volume was created (or recreated) by this call


def _inspect_options(s: HostSession, name: str) -> dict[str, str] | None:
    import json

    r = s.run(s.docker("volume", "inspect", "-f", "{{json .Driver}} {{json .Options}}", name), timeout=60)
    if not r.ok:
        return None
    driver_json, _, opts_json = r.stdout.strip().partition(" ")
    opts = json.loads(opts_json) or {}
    return {"__driver__": json.loads(driver_json), **{k: str(v) for k, v in opts.items()}}


def _fail(s: HostSession, what: str, e: CommandFailed) -> VolumeError:
    """What failed and why (stderr's last lines), without the command: the mount script
    alone is 20 lines, and the user can do nothing with it."""
    hint = None
    if DEAD_MOUNT in e.stderr:
        hint = "the sshfs mount is dead; run again to remount it"
    tail = "; ".join(line.strip() for line in e.stderr.strip().splitlines()[-3:] if line.strip())
    return VolumeError(s.name, f"{what} (exit status {e.exit_status}): {tail or 'no error output'}", hint=hint)


def mount(s: HostSession, spec: VolumeSpec, *, timeout: float = 60.0) -> str:
    """Mount the data host on the host (sshfs driver); 'alive', 'mounted' or 'remounted'."""
    assert spec.mountpoint is not None
    try:
        script = shell.script(MOUNT_SCRIPT, spec.mountpoint, spec.remote, *sshfs_argv(spec))
        r = s.run(script, timeout=timeout, check=True)
    except CommandFailed as e:
        raise _fail(s, f"mounting {spec.remote} with sshfs failed", e) from e
    return r.stdout.strip().rsplit("forge-volume: ", 1)[-1]


def unmount(s: HostSession, mountpoint: str, *, timeout: float = 60.0) -> None:
    s.run(shell.script(UNMOUNT_SCRIPT, mountpoint), timeout=timeout, check=True)


def ensure(
    s: HostSession,
    spec: VolumeSpec,
    *,
    check_image: str,
    uid: int,
    gid: int,
    marker: str | None,
    timeout: float = 120.0,
) -> VolumeState:
    """Make ``spec``'s volume exist and work on the host, idempotently; read the marker through it.

    On failure, what this call created (mount, volume) is removed again and VolumeError raised.
    """
    mount_state = "-"
    if spec.driver == "sshfs":
        mount_state = mount(s, spec, timeout=timeout)
    elif spec.driver == "vieux-sshfs":
        if not s.run(s.docker("plugin", "inspect", VIEUX_PLUGIN), timeout=60).ok:
            try:
                s.run(s.docker(*vieux_install_args(spec)), timeout=timeout, check=True)
            except CommandFailed as e:
                raise _fail(s, f"installing the {VIEUX_PLUGIN} plugin failed", e) from e
    driver, opts = driver_options(spec)
    have = _inspect_options(s, spec.name)
    created = False
    try:
        if have is not None and have != {"__driver__": driver, **opts}:
            # Another definition under our name (e.g. an older mount point): replace it.
            r = s.run(s.docker("volume", "rm", spec.name), timeout=60)
            if not r.ok:
                raise VolumeError(
                    s.name,
                    f"volume {spec.name} exists with other options and cannot be replaced: {r.stderr.strip()}",
                    hint="stop the containers that use it, or remove it with `docker volume rm`",
                )
            have = None
        if have is None:
            try:
                s.run(s.docker(*create_args(spec)), timeout=timeout, check=True)
            except CommandFailed as e:
                raise _fail(s, f"creating volume {spec.name} failed", e) from e
            created = True
        try:
            args = check_args(spec, image=check_image, uid=uid, gid=gid, marker=marker)
            s.run(s.docker(*args), timeout=timeout, check=True)
        except CommandFailed as e:
            what = f"reading {marker!r} through volume {spec.name} failed" if marker else f"{spec.name} is unreadable"
            raise _fail(s, what, e) from e
    except BaseException:  # a failure, a timeout, a lost connection, Ctrl-C
        with contextlib.suppress(ForgeError):  # the first error is the one to tell
            if created:
                drop(s, spec, unmount_in_use=False)
            elif mount_state in ("mounted", "remounted") and spec.mountpoint:
                s.run(shell.script(UNMOUNT_SCRIPT, spec.mountpoint), timeout=60)
        raise
    return VolumeState(spec.name, spec.driver, spec.mountpoint, mount_state, created)


def drop(s: HostSession, spec: VolumeSpec, *, unmount_in_use: bool = True, timeout: float = 60.0) -> bool:
    """Remove the volume and, for sshfs, its mount; True when the volume is gone.

    A volume some container still uses is not removed (``docker volume rm`` refuses); its
    mount is then left too, unless ``unmount_in_use`` (containers using it must be gone)."""
    r = s.run(s.docker("volume", "rm", spec.name), timeout=timeout)
    gone = r.ok or "no such volume" in r.stderr.lower()
    if spec.mountpoint and (gone or unmount_in_use):
        unmount(s, spec.mountpoint, timeout=timeout)
    return gone

"""Launching an environment container the way people type it by hand, and waiting for its sshd.

``docker run -d -t --gpus '"device=UUID,..."' --ipc=host -p PORT:22 -u UID:GID -h HOSTNAME
-v VOLUME:MOUNT --restart=always --label forge.env=ENV --label forge.owner=OWNER ... IMAGE``

Any image whose default command starts sshd on port 22 as the container's user works. forge
passes ``FORGE_USER`` (the login name), ``FORGE_UID``, ``FORGE_GID`` and
``FORGE_AUTHORIZED_KEYS`` (public keys, not secrets) in the container's environment.
The container is ready when ``ssh-keyscan``, run on the GPU host over forge's verified SSH
connection, gets its host keys: those keys are what ``~/.ssh/config``'s block trusts.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from forge import shell
from forge.env.errors import LaunchError
from forge.env.listing import ENV, GPUS, OWNER, SSH_PORT, USER, USER_NAME, HostListing
from forge.env.steps import ctrl_c_held
from forge.hostnum import natural
from forge.session import HostSession

_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_KEY_TYPE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_PORT_TAKEN = ("port is already allocated", "address already in use")


@dataclass(frozen=True)
class HostFacts:
    """The SSH user on a host: the container runs as this uid:gid."""

    uid: int
    gid: int
    user: str
    home: str


FACTS_SCRIPT = 'id -u && id -g && id -un && printf "%s\\n" "$HOME"'


def parse_facts(stdout: str) -> HostFacts:
    """``id -u``, ``id -g``, ``id -un``, ``$HOME``; the name must be a plain user name (it goes
    into labels, ``ssh`` command lines and ``~/.ssh/config``)."""
    lines = stdout.strip().splitlines()[-4:]
    uid, gid = (natural(n, 10) for n in lines[:2]) if len(lines) == 4 else (None, None)
    if uid is None or gid is None or not USER_NAME.match(lines[2]):
        raise ValueError(f"unexpected answer to id -u/-g/-un: {stdout[:200]!r}")
    return HostFacts(uid, gid, lines[2], lines[3])


def host_facts(s: HostSession) -> HostFacts:
    stdout = s.run(shell.script(FACTS_SCRIPT), timeout=30, check=True).stdout
    try:
        return parse_facts(stdout)
    except ValueError as e:
        raise LaunchError(s.name, f"the SSH user's id is not usable: {e}") from None


IMAGE_FORMAT = "{{json .Config.Entrypoint}} {{json .Config.Cmd}}"


def check_image(s: HostSession, image: str) -> None:
    """Refuse, before anything is created, an image that runs nothing by default: the
    environment's sshd is its default command (a bare base image fails later with docker's
    "No command specified")."""
    r = s.run(s.docker("image", "inspect", "-f", IMAGE_FORMAT, image), timeout=60)
    if not r.ok:
        raise LaunchError(s.name, f"cannot inspect the image {image!r}: {' '.join(r.stderr.split())[:200]}")
    if r.stdout.split() == ["null", "null"]:
        raise LaunchError(
            s.name,
            f"the image {image!r} has no default command, so it would start no sshd: it is not a dev environment image",
            hint="build one with `forge build` (see docs/image.md) and name it in [environment].image or --image",
        )


@dataclass(frozen=True)
class LaunchSpec:
    env: str
    owner: str
    image: str
    name: str  # the container's name
    gpus: tuple[str, ...]  # UUIDs (or indexes)
    uid: int
    gid: int
    user: str  # login name inside the container
    hostname: str
    volume: str | None
    mount: str
    authorized_keys: str = ""
    shm_size: str | None = None
    extra_args: tuple[str, ...] = ()


def container_name(env: str, owner: str) -> str:
    """Unique per launch (old and new may share a host while migrating); labels identify envs."""
    return _UNSAFE.sub("_", f"forge-{owner}-{env}-{secrets.token_hex(3)}")


def gpus_arg(gpus: Sequence[str]) -> str:
    """docker's --gpus value: the device list is CSV inside, so it is double-quoted."""
    return f'"device={",".join(gpus)}"'


def run_args(spec: LaunchSpec, port: int) -> list[str]:
    """The ``docker run`` arguments of the environment's container."""
    argv = ["run", "-d", "-t", "--name", spec.name]
    if spec.gpus:
        argv += ["--gpus", gpus_arg(spec.gpus)]
    argv += ["--ipc=host", "-p", f"{port}:22", "-u", f"{spec.uid}:{spec.gid}", "-h", spec.hostname]
    if spec.volume:
        argv += ["-v", f"{spec.volume}:{spec.mount}"]
    argv += ["--restart=always"]
    if spec.shm_size:
        argv += ["--shm-size", spec.shm_size]
    labels = {ENV: spec.env, OWNER: spec.owner, SSH_PORT: str(port), GPUS: ",".join(spec.gpus), USER: spec.user}
    for k, v in labels.items():
        argv += ["--label", f"{k}={v}"]
    env = {
        "FORGE_USER": spec.user,
        "FORGE_UID": str(spec.uid),
        "FORGE_GID": str(spec.gid),
        "FORGE_AUTHORIZED_KEYS": spec.authorized_keys,
    }
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    argv += [*spec.extra_args, spec.image]
    return argv


# --------------------------------------------------------------------------- ports


def parse_listening(ss_stdout: str) -> set[int]:
    """TCP ports in ``ss -Htln`` output (``0.0.0.0:22``, ``[::]:22``, ``*:22``)."""
    ports = set()
    for line in ss_stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            _, _, port = cols[3].rpartition(":")
            if (number := natural(port, 5)) is not None:
                ports.add(number)
    return ports


def used_ports(listening: Collection[int], listing: HostListing) -> set[int]:
    """Ports taken now, or by a forge container that is stopped but will restart."""
    used = set(listening)
    used |= {p for e in listing.environments if (p := e.ssh_port) is not None}
    return used


def choose_port(low: int, high: int, used: Collection[int], *, fixed: int = 0, skip: Collection[int] = ()) -> int:
    if fixed:
        if fixed in used or fixed in skip:
            raise LaunchError("-", f"port {fixed} (environment.ssh_port) is already in use")
        return fixed
    for port in range(low, high + 1):
        if port not in used and port not in skip:
            return port
    raise LaunchError("-", f"no free port in {low}-{high}", hint="widen [environment].ssh_port_range")


def listening_ports(s: HostSession) -> set[int]:
    r = s.run(["ss", "-Htln"], timeout=30, check=True)
    return parse_listening(r.stdout)


def start(
    s: HostSession,
    spec: LaunchSpec,
    *,
    listing: HostListing,
    port_range: tuple[int, int],
    fixed_port: int = 0,
    attempts: int = 5,
    timeout: float = 120.0,
) -> int:
    """``docker run`` the container on a free port (another port when one is taken meanwhile)."""
    used = used_ports(listening_ports(s), listing)
    tried: set[int] = set()
    for _ in range(attempts):
        port = choose_port(*port_range, used, fixed=fixed_port, skip=tried)
        with ctrl_c_held():  # on Ctrl-C the run still ends first: the undo finds the container
            r = s.run(s.docker(*run_args(spec, port)), timeout=timeout)
        if r.ok:
            return port
        remove(s, spec.name)  # a failed run can leave the container created
        if fixed_port or not any(w in r.stderr for w in _PORT_TAKEN):
            tail = "\n".join(r.stderr.strip().splitlines()[-3:])
            raise LaunchError(s.name, f"docker run failed: {tail}")
        tried.add(port)
    raise LaunchError(s.name, f"no port could be published after {attempts} tries")


def remove(s: HostSession, name: str, *, timeout: float = 60.0) -> bool:
    """Stop and remove a container; False when there was none."""
    return s.run(s.docker("rm", "-f", name), timeout=timeout).ok


# --------------------------------------------------------------------------- readiness

# $1: the container, $2: its SSH port, then docker's words for the host.
READY_SCRIPT = r"""
c=$1; port=$2; shift 2
s=$("$@" inspect -f '{{.State.Status}} {{.RestartCount}}' "$c") || exit 3
case "$s" in
  "running 0") ;;
  *) echo "forge-state: $s"; "$@" logs --tail 5 "$c" 2>&1; exit 4 ;;
esac
ssh-keyscan -T 3 -p "$port" 127.0.0.1 2>/dev/null
exit 0
"""


def parse_keyscan(stdout: str) -> list[tuple[str, str]]:
    """(key type, base64 key) pairs from ``ssh-keyscan`` output."""
    keys = []
    for line in stdout.splitlines():
        cols = line.split()
        if len(cols) >= 3 and not line.startswith("#") and _KEY_TYPE.match(cols[1]) and _BASE64.match(cols[2]):
            keys.append((cols[1], cols[2]))
    return keys


def wait_ready(
    s: HostSession,
    name: str,
    port: int,
    *,
    timeout_s: float = 60.0,
    interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[tuple[str, str]]:
    """Wait until the container's sshd answers on ``port``; return its host keys.

    Fails at once when the container stops or restarts (its command exited)."""
    deadline = clock() + timeout_s
    command = shell.script(READY_SCRIPT, name, str(port), *s.docker_words)
    while True:
        r = s.run(command, timeout=30)
        if r.exit_status == 3:
            raise LaunchError(s.name, f"container {name} is gone")
        if r.exit_status == 4:
            raise LaunchError(s.name, f"container {name} is not running: {r.stdout.strip()[13:]}")
        keys = parse_keyscan(r.stdout)
        if keys:
            return keys
        if clock() > deadline:
            raise LaunchError(s.name, f"the sshd of {name} did not answer on port {port} within {timeout_s:g} s")
        sleep(interval_s)

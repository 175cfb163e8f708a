"""One Docker daemon per GPU host, inside the host's network namespace, with a stub NVIDIA
hook on its PATH so that ``docker run --gpus`` works and is recorded. The host's flavor
(:mod:`forge.lab.flavors`) says which engine: this machine's, or a newer Debian's run from
its own root (:mod:`forge.lab.suiteroot`)."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from forge.lab import suiteroot
from forge.lab.config import LabConfig
from forge.lab.errors import LabError
from forge.lab.flavors import DEFAULT_FLAVORS, Flavor, flavor
from forge.lab.netns import nsenter
from forge.lab.proc import pid_alive, pids_mentioning, read_pidfile, run, wait_until, which
from forge.transport.base import CommandResult

HOOK_NAME = "nvidia-container-runtime-hook"

HOOK_SCRIPT = '''#!/usr/bin/python3
"""Stub NVIDIA container hook of a forge lab host: records what GPUs were asked for."""
import json, os, sys, time
LOG = {log!r}
try:
    state = json.load(sys.stdin)
except ValueError:
    state = {{}}
bundle = state.get("bundle") or ""
env = {{}}
try:
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    for item in spec.get("process", {{}}).get("env", []):
        k, _, v = item.partition("=")
        if k.startswith("NVIDIA_"):
            env[k] = v
except OSError:
    pass
record = {{
    "time": time.time(),
    "argv": sys.argv[1:],
    "id": state.get("id"),
    "bundle": bundle,
    "NVIDIA_VISIBLE_DEVICES": env.get("NVIDIA_VISIBLE_DEVICES"),
    "env": env,
}}
with open(LOG, "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.exit(0)
'''


def _dir(cfg: LabConfig, name: str) -> Path:
    return cfg.host_dir(name) / "docker"


def pidfile(cfg: LabConfig, name: str) -> Path:
    return cfg.host_dir(name) / "dockerd.pid"


def exec_root(cfg: LabConfig, name: str) -> Path:
    return cfg.host_dir(name) / "run"


def hook_dir(cfg: LabConfig, name: str) -> Path:
    return cfg.host_dir(name) / "hookbin"


def key_path(cfg: LabConfig, name: str) -> Path:
    return cfg.host_dir(name) / "docker-key.json"


def log_path(cfg: LabConfig, name: str) -> Path:
    return cfg.host_dir(name) / "dockerd.log"


def install_hook(cfg: LabConfig, name: str) -> None:
    d = hook_dir(cfg, name)
    d.mkdir(parents=True, exist_ok=True)
    hook = d / HOOK_NAME
    hook.write_text(HOOK_SCRIPT.format(log=str(cfg.gpu_hook_log(name))))
    hook.chmod(0o755)
    cfg.gpu_hook_log(name).touch()


def ns_pidfile(cfg: LabConfig, name: str) -> Path:
    """The launcher of a chrooted daemon (``unshare``), which ends when its namespaces do."""
    return cfg.host_dir(name) / "dockerd-ns.pid"


def _flavor(cfg: LabConfig, name: str) -> Flavor:
    return flavor(cfg.host(name).flavor or DEFAULT_FLAVORS[0])


def daemon_config(cfg: LabConfig, name: str) -> dict[str, object]:
    """The host daemon's daemon.json: its own identity key (else every 20.10 daemon shares
    /etc/docker/key.json, hence one ID; 26 keeps its ID in the data root) and, for the
    containerd flavor, the containerd image store."""
    config: dict[str, object] = {"deprecated-key-path": str(key_path(cfg, name))}
    if _flavor(cfg, name).containerd_store:
        config["features"] = {"containerd-snapshotter": True}
    return config


def argv(cfg: LabConfig, name: str) -> list[str]:
    """The daemon's command line as it sees paths: inside its root for chrooted flavors,
    where the lab root is at the same path, so every path is the same for every flavor."""
    spec = cfg.host(name)
    chrooted = _flavor(cfg, name).chroot
    config_file = cfg.host_dir(name) / "daemon.json"
    config_file.write_text(json.dumps(daemon_config(cfg, name)) + "\n")
    return [
        "/usr/sbin/dockerd" if chrooted else which("dockerd"),
        "--host",
        cfg.docker_host(name),
        "--data-root",
        str(_dir(cfg, name)),
        "--exec-root",
        str(exec_root(cfg, name)),
        "--pidfile",
        # A chrooted daemon would write its pid in its own pid namespace: the lab writes
        # pidfile() itself, as this machine sees it.
        str(exec_root(cfg, name) / "dockerd.pid" if chrooted else pidfile(cfg, name)),
        "--config-file",
        str(config_file),
        "--bip",
        cfg.docker_bip(spec),
        # By number: a chrooted daemon reads its own /etc/group.
        "--group",
        str(grp.getgrnam(cfg.docker_group).gr_gid),
        "--containerd-namespace",
        f"forgelab-{name}",
        "--containerd-plugins-namespace",
        f"forgelab-{name}-plugins",
    ]


def launcher(cfg: LabConfig, name: str) -> list[str]:
    """The whole command run in the host's network namespace."""
    suite = _flavor(cfg, name).suite
    command = argv(cfg, name)
    return [*nsenter(cfg.host(name).netns), *(suiteroot.enter_argv(cfg, suite, command) if suite else command)]


def pid(cfg: LabConfig, name: str) -> int | None:
    p = read_pidfile(pidfile(cfg, name))
    return p if pid_alive(p) else None


def ping(sock: Path, timeout: float = 1.0) -> bool:
    """True when a Docker daemon answers ``/_ping`` on this socket."""
    head = _get(sock, "/_ping", timeout, whole=False)
    return head is not None and head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]


def server_version(sock: Path, timeout: float = 2.0) -> str | None:
    """The engine version the daemon on this socket reports (``/version``), or None."""
    answer = _get(sock, "/version", timeout)
    if answer is None or b"\r\n\r\n" not in answer:
        return None
    try:
        version = json.loads(answer.split(b"\r\n\r\n", 1)[1]).get("Version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def _get(sock: Path, url: str, timeout: float, *, whole: bool = True) -> bytes | None:
    """The raw HTTP/1.0 answer to ``GET url`` on a unix socket: all of it (up to 1 MiB), or
    with ``whole=False`` its first bytes."""
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if not whole or sum(map(len, chunks)) >= 1 << 20:
                    break
    except OSError:
        return None
    return b"".join(chunks)


def start(cfg: LabConfig, name: str) -> None:
    if pid(cfg, name) and ping(cfg.docker_socket(name)):
        return
    install_hook(cfg, name)
    env = dict(os.environ)
    env["PATH"] = f"{hook_dir(cfg, name)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.pop("DOCKER_HOST", None)
    with open(log_path(cfg, name), "ab") as log:
        proc = subprocess.Popen(
            launcher(cfg, name),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    sock = cfg.docker_socket(name)
    if not (wait_until(lambda: ping(sock) or proc.poll() is not None, 90, 0.25) and ping(sock)):
        tail = log_path(cfg, name).read_text(errors="replace").strip().splitlines()[-5:]
        raise LabError(
            f"{name}: dockerd did not answer on {sock} within 90 s: " + "\n".join(tail),
            hint=f"see {log_path(cfg, name)}",
        )
    if _flavor(cfg, name).chroot:
        ns_pidfile(cfg, name).write_text(f"{proc.pid}\n")
        pidfile(cfg, name).write_text(f"{_outer_pid(cfg, name)}\n")


def _outer_pid(cfg: LabConfig, name: str) -> int:
    """A chrooted daemon's pid as this machine sees it (found by its socket, the only
    ``--host`` argument that names it)."""
    found = pids_mentioning(cfg.docker_host(name) + "\0", {"dockerd"})
    if len(found) != 1:
        raise LabError(f"{name}: expected one dockerd serving {cfg.docker_host(name)}, found {sorted(found)}")
    return found.pop()


def docker(cfg: LabConfig, name: str, *args: str, check: bool = True, timeout: float | None = 120) -> CommandResult:
    """Run the docker CLI against this host's daemon."""
    return run(["docker", "-H", cfg.docker_host(name), *args], check=check, timeout=timeout)


def remove_containers(cfg: LabConfig, name: str) -> None:
    if not ping(cfg.docker_socket(name)):
        return
    ids = docker(cfg, name, "ps", "-aq", check=False).stdout.split()
    if ids:
        docker(cfg, name, "rm", "-f", *ids, check=False)


def stop(cfg: LabConfig, name: str) -> None:
    """Stop the daemon (after removing its containers, so shutdown is quick)."""
    remove_containers(cfg, name)
    p = pid(cfg, name)
    if p is None:
        return
    os.kill(p, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(p), 30, 0.2):
        os.kill(p, signal.SIGKILL)
        wait_until(lambda: not pid_alive(p), 5)
    # A chrooted daemon's namespaces (and mounts) end with its launcher.
    launcher_pid = read_pidfile(ns_pidfile(cfg, name))
    if launcher_pid is not None:
        wait_until(lambda: not pid_alive(launcher_pid), 10, 0.1)
        ns_pidfile(cfg, name).unlink(missing_ok=True)


def hook_records(cfg: LabConfig, name: str) -> list[dict[str, object]]:
    path = cfg.gpu_hook_log(name)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""One Docker daemon per GPU host, inside the host's network namespace, with a stub NVIDIA
hook on its PATH so that ``docker run --gpus`` works and is recorded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from forge.lab.config import LabConfig
from forge.lab.errors import LabError
from forge.lab.netns import nsenter
from forge.lab.proc import pid_alive, read_pidfile, run, wait_until, which

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


def argv(cfg: LabConfig, name: str) -> list[str]:
    spec = cfg.host(name)
    config_file = cfg.host_dir(name) / "daemon.json"
    # Its own identity key (else every daemon shares /etc/docker/key.json, hence one ID).
    config_file.write_text(json.dumps({"deprecated-key-path": str(key_path(cfg, name))}) + "\n")
    return [
        which("dockerd"),
        "--host",
        cfg.docker_host(name),
        "--data-root",
        str(_dir(cfg, name)),
        "--exec-root",
        str(exec_root(cfg, name)),
        "--pidfile",
        str(pidfile(cfg, name)),
        "--config-file",
        str(config_file),
        "--bip",
        cfg.docker_bip(spec),
        "--group",
        cfg.user,
        "--containerd-namespace",
        f"forgelab-{name}",
        "--containerd-plugins-namespace",
        f"forgelab-{name}-plugins",
    ]


def pid(cfg: LabConfig, name: str) -> int | None:
    p = read_pidfile(pidfile(cfg, name))
    return p if pid_alive(p) else None


def ping(sock: Path, timeout: float = 1.0) -> bool:
    """True when a Docker daemon answers ``/_ping`` on this socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]


def start(cfg: LabConfig, name: str) -> None:
    if pid(cfg, name) and ping(cfg.docker_socket(name)):
        return
    spec = cfg.host(name)
    install_hook(cfg, name)
    env = dict(os.environ)
    env["PATH"] = f"{hook_dir(cfg, name)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.pop("DOCKER_HOST", None)
    with open(log_path(cfg, name), "ab") as log:
        subprocess.Popen(
            [*nsenter(spec.netns), *argv(cfg, name)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    if not wait_until(lambda: ping(cfg.docker_socket(name)), 60, 0.25):
        tail = log_path(cfg, name).read_text(errors="replace").strip().splitlines()[-5:]
        raise LabError(
            f"{name}: dockerd did not answer on {cfg.docker_socket(name)} within 60 s: " + "\n".join(tail),
            hint=f"see {log_path(cfg, name)}",
        )


def docker(
    cfg: LabConfig, name: str, *args: str, check: bool = True, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
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


def hook_records(cfg: LabConfig, name: str) -> list[dict[str, object]]:
    path = cfg.gpu_hook_log(name)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

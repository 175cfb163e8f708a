"""One OpenSSH server per lab host, inside the host's network namespace."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from forge.lab.config import JUMP_HOST, LabConfig
from forge.lab.errors import LabError
from forge.lab.netns import nsenter
from forge.lab.proc import pid_alive, read_pidfile, run, wait_until, which


def _dir(cfg: LabConfig, name: str) -> Path:
    return cfg.host_dir(name) / "sshd"


def host_key(cfg: LabConfig, name: str) -> Path:
    return _dir(cfg, name) / "ssh_host_ed25519_key"


def pidfile(cfg: LabConfig, name: str) -> Path:
    return _dir(cfg, name) / "sshd.pid"


def config_path(cfg: LabConfig, name: str) -> Path:
    return _dir(cfg, name) / "sshd_config"


def host_env(cfg: LabConfig, name: str) -> dict[str, str]:
    """What every SSH session on this host gets (through ``SetEnv``); the jump host has
    neither a Docker daemon nor GPUs."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if cfg.host(name).role == JUMP_HOST:
        return {"PATH": path, "FORGE_LAB_HOST": name}
    return {
        "DOCKER_HOST": cfg.docker_host(name),
        "PATH": f"{cfg.bin_dir(name)}:{path}",
        "FORGE_LAB_HOST": name,
        "FORGE_LAB_GPU_STATE": str(cfg.gpu_state(name)),
    }


def render_config(cfg: LabConfig, name: str) -> str:
    address = cfg.host(name).address
    setenv = " ".join(f"{k}={v}" for k, v in host_env(cfg, name).items())
    return "\n".join(
        [
            "# sshd of a forge lab host (written by `forge lab up`)",
            f"ListenAddress {address}",
            "Port 22",
            f"HostKey {host_key(cfg, name)}",
            f"PidFile {pidfile(cfg, name)}",
            # One file per user: neither user's key logs in as the other. Then the user's
            # own file (sshd's default), where forge sync --via direct places transfer keys.
            f"AuthorizedKeysFile {cfg.authorized_keys_dir}/%u .ssh/authorized_keys",
            f"AllowUsers {cfg.user} {cfg.other_user}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "UsePAM no",
            "X11Forwarding yes",
            "AllowTcpForwarding yes",
            "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp",
            f"SetEnv {setenv}",
            "",
        ]
    )


def ensure_config(cfg: LabConfig, name: str) -> str:
    """Write the host's key (once) and config; return its public key line."""
    d = _dir(cfg, name)
    d.mkdir(parents=True, exist_ok=True)
    key = host_key(cfg, name)
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@forge-lab", "-f", str(key)])
    config_path(cfg, name).write_text(render_config(cfg, name))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    run([which("sshd"), "-t", "-f", str(config_path(cfg, name))], hint="the generated sshd_config is invalid")
    return key.with_suffix(".pub").read_text().strip()


def pid(cfg: LabConfig, name: str) -> int | None:
    p = read_pidfile(pidfile(cfg, name))
    return p if pid_alive(p) else None


def port_open(address: str, port: int = 22, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def start(cfg: LabConfig, name: str) -> None:
    if pid(cfg, name):
        return
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    spec = cfg.host(name)
    run(
        [*nsenter(spec.netns), which("sshd"), "-f", str(config_path(cfg, name))],
        hint=f"try `sshd -d -f {config_path(cfg, name)}` in netns {spec.netns}",
    )
    if not wait_until(lambda: port_open(spec.address), 10):
        raise LabError(f"{name}: sshd started but {spec.address}:22 does not answer")


def stop(cfg: LabConfig, name: str) -> None:
    """Stop the listening sshd (open sessions live on until they end)."""
    p = pid(cfg, name)
    if p is None:
        return
    os.kill(p, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(p), 5):
        os.kill(p, signal.SIGKILL)
    pidfile(cfg, name).unlink(missing_ok=True)

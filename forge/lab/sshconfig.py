"""The OpenSSH client config of a bastion lab (``<root>/ssh/config``): ``Host jump`` on the
outer network, and one ``Host`` alias per data and GPU host at its inner address with
``ProxyJump jump``; every hop logs in with the lab's key and is checked against the lab's
known_hosts. ``ssh -F`` applies the file to the jump hop too, which ``-o`` options never
reach. A second file logs the other user in."""

from __future__ import annotations

from pathlib import Path

from forge.lab.config import JUMP_HOST, LabConfig


def _value(value: str | Path) -> str:
    text = str(value)
    if any(c in text for c in '"\n'):
        raise ValueError(f"cannot write {text!r} into an ssh_config")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def render(cfg: LabConfig, user: str, identity_file: Path) -> str:
    """The client config logging ``user`` in with ``identity_file``."""
    common = [
        f"User {_value(user)}",
        f"IdentityFile {_value(identity_file)}",
        "IdentitiesOnly yes",
        f"UserKnownHostsFile {_value(cfg.known_hosts)}",
        "StrictHostKeyChecking yes",
    ]
    lines = ["# OpenSSH client config of a forge lab behind a bastion (written by `forge lab up`)."]
    for host in sorted(cfg.all_hosts(), key=lambda h: h.role != JUMP_HOST):  # the jump host first
        lines += ["", f"Host {host.name}", f"    HostName {host.address}", *(f"    {c}" for c in common)]
        if host.role != JUMP_HOST:
            lines.append(f"    ProxyJump {JUMP_HOST}")
    return "\n".join(lines) + "\n"


def write(cfg: LabConfig) -> None:
    """Both users' configs (only a bastion lab has them)."""
    for user in (cfg.user, cfg.other_user):
        path = cfg.ssh_config_of(user)
        path.write_text(render(cfg, user, cfg.identity_of(user)))
        path.chmod(0o644)

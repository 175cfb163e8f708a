"""The lab user, its key pair, and the known_hosts every client of the lab verifies against."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from forge.lab.config import LabConfig
from forge.lab.proc import run


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_user(cfg: LabConfig) -> bool:
    """Create the lab user (home under the lab root) when absent. True when created here."""
    created = False
    if not user_exists(cfg.user):
        cfg.home.parent.mkdir(parents=True, exist_ok=True)
        run(["useradd", "--create-home", "--home-dir", str(cfg.home), "--shell", "/bin/bash", "--user-group", cfg.user])
        created = True
    # A locked password ("!") makes sshd (UsePAM no) refuse even key logins; "*" allows keys.
    run(["usermod", "-p", "*", cfg.user])
    return created


def remove_user(name: str) -> None:
    if user_exists(name):
        run(["userdel", name])


def ensure_keypair(cfg: LabConfig) -> None:
    cfg.ssh_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.identity_file.exists():
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{cfg.user}@forge-lab", "-f", str(cfg.identity_file)]
        )
    pub = cfg.identity_file.with_suffix(".pub").read_text()
    cfg.authorized_keys.write_text(pub)
    cfg.authorized_keys.chmod(0o644)


def write_known_hosts(cfg: LabConfig, host_keys: dict[str, str]) -> None:
    """``host_keys`` maps an address to its public key line ("ssh-ed25519 AAAA...")."""
    lines = [f"{addr} {key.split()[0]} {key.split()[1]}\n" for addr, key in host_keys.items()]
    cfg.known_hosts.write_text("".join(lines))
    cfg.known_hosts.chmod(0o644)


def install_user_ssh(cfg: LabConfig) -> None:
    """Copy the key pair and known_hosts into the lab user's ~/.ssh (hosts mount the data
    host over sshfs as that user)."""
    entry = pwd.getpwnam(cfg.user)
    dot_ssh = Path(entry.pw_dir) / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    for src in (cfg.identity_file, cfg.identity_file.with_suffix(".pub"), cfg.known_hosts):
        dst = dot_ssh / src.name
        shutil.copyfile(src, dst)
        dst.chmod(0o600 if src == cfg.identity_file else 0o644)
    for path in [dot_ssh, *dot_ssh.iterdir()]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def user_home(cfg: LabConfig) -> Path:
    return Path(pwd.getpwnam(cfg.user).pw_dir)


PROFILE = """\
# ~/.profile of the forge lab user (written by `forge lab up`).
# Login shells reset PATH in /etc/profile: put this host's tools (nvidia-smi) first again.
if [ -n "$FORGE_LAB_HOST" ]; then
    PATH="{root}/hosts/$FORGE_LAB_HOST/bin:$PATH"
fi
if [ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ]; then
    . "$HOME/.bashrc"
fi
"""


def write_profile(cfg: LabConfig) -> None:
    """Give the lab user's login shells the host's PATH (only in a home the lab owns)."""
    entry = pwd.getpwnam(cfg.user)
    if Path(entry.pw_dir) != cfg.home:
        return
    profile = cfg.home / ".profile"
    profile.write_text(PROFILE.format(root=cfg.root))
    os.chown(profile, entry.pw_uid, entry.pw_gid)

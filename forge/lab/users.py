"""The lab's users, their key pairs, and the known_hosts every client of the lab verifies
against. Two users, as on a shared server: the lab user (whom forge logs in as) and another,
unprivileged one; both are in the group that may use each host's Docker socket."""

from __future__ import annotations

import grp
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


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def ensure_user(name: str, home: Path) -> bool:
    """Create a user (home ``home``, own group) when absent. True when created here."""
    created = False
    if not user_exists(name):
        home.parent.mkdir(parents=True, exist_ok=True)
        run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group", name])
        created = True
    # A locked password ("!") makes sshd (UsePAM no) refuse even key logins; "*" allows keys.
    run(["usermod", "-p", "*", name])
    return created


def ensure_docker_group(cfg: LabConfig) -> bool:
    """The group of every host's Docker socket, with both users in it. True when created."""
    created = False
    if not group_exists(cfg.docker_group):
        run(["groupadd", cfg.docker_group])
        created = True
    for user in (cfg.user, cfg.other_user):
        run(["usermod", "--append", "--groups", cfg.docker_group, user])
    return created


def remove_user(name: str) -> None:
    if user_exists(name):
        run(["userdel", name])


def remove_group(name: str) -> None:
    if group_exists(name):
        run(["groupdel", name])


def ensure_keypairs(cfg: LabConfig) -> None:
    """A key pair per user, and sshd's per-user authorized keys (``authorized/<user>``)."""
    cfg.ssh_dir.mkdir(parents=True, exist_ok=True)
    keys_dir = cfg.authorized_keys_dir
    keys_dir.mkdir(mode=0o755, exist_ok=True)
    for user in (cfg.user, cfg.other_user):
        key = cfg.identity_of(user)
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@forge-lab", "-f", str(key)])
        authorized = keys_dir / user
        authorized.write_text(key.with_suffix(".pub").read_text())
        authorized.chmod(0o644)


def write_known_hosts(cfg: LabConfig, host_keys: dict[str, str]) -> None:
    """``host_keys`` maps an address to its public key line ("ssh-ed25519 AAAA...")."""
    lines = [f"{addr} {key.split()[0]} {key.split()[1]}\n" for addr, key in host_keys.items()]
    cfg.known_hosts.write_text("".join(lines))
    cfg.known_hosts.chmod(0o644)


def install_user_ssh(cfg: LabConfig) -> None:
    """Copy each user's key pair and the known_hosts into its ~/.ssh (hosts mount the data
    host over sshfs as that user)."""
    for user in (cfg.user, cfg.other_user):
        entry = pwd.getpwnam(user)
        dot_ssh = Path(entry.pw_dir) / ".ssh"
        dot_ssh.mkdir(mode=0o700, exist_ok=True)
        key = cfg.identity_of(user)
        for src, name in ((key, "id_ed25519"), (key.with_suffix(".pub"), "id_ed25519.pub"), (cfg.known_hosts, None)):
            dst = dot_ssh / (name or src.name)
            shutil.copyfile(src, dst)
            dst.chmod(0o600 if src == key else 0o644)
        for path in [dot_ssh, *dot_ssh.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def user_home(cfg: LabConfig) -> Path:
    return Path(pwd.getpwnam(cfg.user).pw_dir)


PROFILE = """\
# ~/.profile of a forge lab user (written by `forge lab up`).
# Login shells reset PATH in /etc/profile: put this host's tools (nvidia-smi) first again.
if [ -n "$FORGE_LAB_HOST" ]; then
    PATH="{root}/hosts/$FORGE_LAB_HOST/bin:$PATH"
fi
if [ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ]; then
    . "$HOME/.bashrc"
fi
"""


def write_profiles(cfg: LabConfig) -> None:
    """Give the users' login shells the host's PATH (only in homes the lab owns)."""
    for user, home in ((cfg.user, cfg.home), (cfg.other_user, cfg.other_home)):
        entry = pwd.getpwnam(user)
        if Path(entry.pw_dir) != home:
            continue
        profile = home / ".profile"
        profile.write_text(PROFILE.format(root=cfg.root))
        os.chown(profile, entry.pw_uid, entry.pw_gid)

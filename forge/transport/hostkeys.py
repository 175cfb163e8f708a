"""Host key verification for SSH connections.

Fabric accepts any host key and never reads known_hosts (it installs paramiko's
``AutoAddPolicy``), so forge sets the policy on the client itself:

* ``strict`` (the default): the key must already be in a known_hosts file;
* ``accept-new``: an unknown key is recorded in the known_hosts file and accepted (what
  OpenSSH calls ``StrictHostKeyChecking=accept-new``);
* a key that differs from the recorded one is refused under every policy (paramiko raises
  ``BadHostKeyException`` before the policy is consulted).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from pathlib import Path

import paramiko

from forge.errors import HostKeyError

_append_lock = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_files(explicit: str | None, ssh_config_files: list[str] | None = None) -> list[Path]:
    """The known_hosts files to read: the inventory's, else ~/.ssh/config's, else ~/.ssh's."""
    if explicit:
        return [Path(explicit).expanduser()]
    if ssh_config_files:
        return [Path(p).expanduser() for p in ssh_config_files]
    return [Path("~/.ssh/known_hosts").expanduser()]


class _Reject(paramiko.MissingHostKeyPolicy):
    def __init__(self, host: str, files: list[Path]) -> None:
        self.host = host
        self.files = files

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        shown = ", ".join(str(f) for f in self.files)
        raise HostKeyError(
            self.host,
            f"unknown host key for {hostname} ({key.get_name()} {fingerprint(key)}); it is not in {shown}",
            hint="check the fingerprint with the host's admin, then add it with "
            f'`ssh-keyscan` to {self.files[0]}, or set host_key_policy = "accept-new" '
            "for this host in hosts.toml",
        )


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _append_lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)


def configure(client: paramiko.SSHClient, *, host: str, policy: str, files: list[Path]) -> None:
    """Load the known_hosts files into ``client`` and set the missing-key policy."""
    for f in files:
        if f.is_file():
            try:
                client.load_host_keys(str(f))
            except (OSError, paramiko.SSHException) as e:
                raise HostKeyError(host, f"cannot read known_hosts file {f}: {e}") from e
    if policy == "accept-new":
        client.set_missing_host_key_policy(_AcceptNew(files[0]))
    else:
        client.set_missing_host_key_policy(_Reject(host, files))


def changed_key_error(host: str, e: paramiko.BadHostKeyException, files: list[Path]) -> HostKeyError:
    return HostKeyError(
        host,
        f"the host key of {e.hostname} has CHANGED: known_hosts has {fingerprint(e.expected_key)}, "
        f"the server offered {fingerprint(e.key)}; refusing to connect (this can be a "
        "man-in-the-middle attack)",
        hint=f"if the host was reinstalled, remove the old key with `ssh-keygen -R {e.hostname}"
        f" -f {files[0]}` and verify the new one",
    )

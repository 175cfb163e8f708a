"""Shared fixtures. ``lab``: the forge lab (a fleet of real sshd/dockerd hosts in network
namespaces on this machine), brought up once per test session.

- Its GPU hosts' Docker engines are ``$FORGE_LAB_FLAVORS`` (default
  ``bookworm,trixie,trixie-containerd``: gpu1 bookworm, gpu2 trixie, gpu3
  trixie-containerd, gpu4 bookworm), and ``FORGE_LAB_BASTION=1`` puts the hosts behind a
  jump host.
- A lab already running at ``$FORGE_LAB_ROOT`` (default /var/lib/forge-lab) with these
  settings is reused and left running; one with other settings is taken down and brought up
  with these (keeping its bridge, network and user: a second lab on the machine stays one),
  and left running.
- Otherwise the fixture brings one up and takes it down when the session ends, unless
  ``FORGE_LAB_KEEP=1``.
- When the lab cannot start (not root, missing tools), lab tests are skipped with the reason;
  with ``CI=true`` the run fails instead, so CI never passes by skipping them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from forge.errors import ForgeError
from forge.lab import Lab, state
from forge.lab.config import default_root
from forge.lab.flavors import parse_flavors

LAB_HOSTS = 4
LAB_FLAVORS = "bookworm,trixie,trixie-containerd"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class LabHandle:
    """What a test needs of the lab."""

    lab: Lab
    inventory_path: Path = field(init=False)
    root: Path = field(init=False)
    hosts: list[str] = field(init=False)  # the GPU hosts: gpu1..gpuN
    identity_file: Path = field(init=False)
    known_hosts: Path = field(init=False)
    data_address: str = field(init=False)

    def __post_init__(self) -> None:
        self.inventory_path = self.lab.inventory_path
        self.root = self.lab.root
        self.hosts = self.lab.gpu_hosts
        self.identity_file = self.lab.identity_file
        self.known_hosts = self.lab.known_hosts
        self.data_address = self.lab.address("data")

    @property
    def user(self) -> str:
        return self.lab.config.user

    @property
    def other_user(self) -> str:
        """A second, unprivileged user of every host, in the docker socket's group."""
        return self.lab.other_user

    @property
    def other_identity_file(self) -> Path:
        """The other user's private key (``<root>/ssh/other_ed25519``)."""
        return self.lab.config.other_identity_file

    @property
    def bastion(self) -> bool:
        """Whether the hosts sit behind the jump host (``ssh -F <root>/ssh/config``)."""
        return self.lab.bastion

    @property
    def ssh_config(self) -> Path | None:
        """Behind a bastion, the lab's OpenSSH client config (Host aliases with ProxyJump)."""
        return self.lab.config.ssh_config if self.bastion else None

    def flavor(self, name: str) -> str:
        """The GPU host's Docker engine flavor: bookworm, trixie or trixie-containerd."""
        return self.lab.flavor(name)

    def address(self, name: str) -> str:
        return self.lab.address(name)

    def set_gpus(self, name: str, state: dict[str, Any] | None) -> None:
        self.lab.set_gpus(name, state)

    def reset_gpus(self, name: str) -> None:
        self.lab.reset_gpus(name)

    def host_down(self, name: str) -> AbstractContextManager[None]:
        return self.lab.host_down(name)

    def docker(self, name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against a GPU host's daemon from here; the result shaped like the
        ssh helpers' (subprocess's), so that tests read both alike."""
        r = self.lab.docker(name, *args, timeout=timeout)
        return subprocess.CompletedProcess(r.command, r.exit_status, r.stdout, r.stderr)

    def load_base_image(self, name: str) -> str:
        self.lab.load_base_image(name)
        from forge.lab import BASE_IMAGE

        return BASE_IMAGE

    def ssh_argv(self, name: str, *command: str) -> list[str]:
        return self.lab.ssh_argv(name, *command)

    def ssh(self, name: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(name, *command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def ssh_as_other(self, name: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """OpenSSH as the other user with its own key, the host key checked (also the jump's)."""
        argv = self.lab.ssh_argv(name, *command, user=self.other_user)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def docker_as_other(self, name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` in the other user's SSH session on a GPU host (its DOCKER_HOST)."""
        return self.ssh_as_other(name, "docker", *args, timeout=timeout)


def _lock_path(the_lab: Lab) -> Path:
    d = Path("/run/forge-lab")
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{the_lab.config.bridge}.sessions.lock"


def _wanted(current: Lab) -> Lab:
    """The session's lab: the one at the root (its bridge, network, user), with the host
    count, flavors and bastion the environment asks for."""
    flavors = parse_flavors(os.environ.get("FORGE_LAB_FLAVORS") or LAB_FLAVORS)
    bastion = os.environ.get("FORGE_LAB_BASTION", "").lower() in ("1", "true", "yes")
    return Lab(dataclasses.replace(current.config, hosts=LAB_HOSTS, flavors=flavors, bastion=bastion))


def _bring_up(root: Path) -> tuple[Lab, bool]:
    """Bring the wanted lab up (the caller holds the lock exclusively); True when there was
    no lab before, so that this session takes it down at its end."""
    current = Lab.at(root)
    the_lab = _wanted(current)
    recorded = state.load(root.absolute())
    if recorded is not None and state.differences(recorded, the_lab.config):
        current.down()  # another session's settings, or an older layout
    elif recorded is not None and the_lab.status().up:
        return the_lab, False
    the_lab.up()
    return the_lab, recorded is None


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    """Several test sessions may share the lab at once (other engineers, other terminals):
    each holds a shared lock on it for its whole run; bringing it up takes the lock
    exclusively; the session that brought it up takes it down at the end only when it can
    get the lock exclusively (no other session still uses it)."""
    root = default_root()
    the_lab = Lab.at(root)
    started_here = False
    lock = None
    try:
        lock = open(_lock_path(the_lab), "a+")  # held for the whole session
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            the_lab, started_here = _bring_up(root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_SH)
    except (ForgeError, OSError, ValueError) as e:
        if lock is not None:
            lock.close()
        reason = f"the forge lab cannot start: {e}"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield LabHandle(the_lab)
    finally:
        try:
            if started_here and not os.environ.get("FORGE_LAB_KEEP"):
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another session still uses the lab: leave it up
                else:
                    the_lab.down()
        finally:
            lock.close()

"""The lab as one object: ``Lab(config).up()``, ``.status()``, ``.down()`` and the knobs
tests turn (GPU state, one host's sshd, the base image)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from forge import shell
from forge.lab import dockerd, fuse, gpus, image, inventory, mounts, netns, sshd, state, users
from forge.lab.config import DATA_MARKER, DATA_MARKER_CONTENT, LabConfig, default_root
from forge.lab.errors import LabError
from forge.lab.proc import (
    Progress,
    kill_all,
    no_progress,
    pids_mentioning,
    require,
    run,
    with_descendants,
)

TOOLS = [
    "ip",
    "nsenter",
    "iptables",
    "useradd",
    "userdel",
    "usermod",
    "ssh-keygen",
    "sshd",
    "dockerd",
    "docker",
    "containerd",
    "runc",
]
# Programs of a lab that may outlive their parents outside its namespaces (containerd's shims
# re-parent to init); found by the lab root in their command line.
DETACHED = {
    "containerd-shim-runc-v2",
    "containerd-shim-runc-v1",
    "containerd-shim",
    "containerd",
    "dockerd",
    "sshd",
    "sshfs",
    "docker-proxy",
}

T = TypeVar("T")


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    netns: bool
    sshd: bool
    dockerd: bool | None  # None on the data host, which has no daemon

    @property
    def up(self) -> bool:
        return self.netns and self.sshd and self.dockerd is not False


@dataclass(frozen=True)
class LabStatus:
    root: str
    exists: bool
    bridge: bool
    hosts: list[HostStatus]

    @property
    def up(self) -> bool:
        return self.exists and self.bridge and bool(self.hosts) and all(h.up for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["up"] = self.up
        for h, hd in zip(self.hosts, d["hosts"], strict=True):
            hd["up"] = h.up
        return d


def _check_root_path(root: Path) -> None:
    """sshd (StrictModes) refuses keys below a directory others may write, e.g. /tmp."""
    for parent in root.parents:
        if parent.exists():
            st = parent.stat()
            if st.st_mode & 0o022 or st.st_uid != 0:
                raise LabError(
                    f"the lab root {root} is below {parent}, which is writable by others or "
                    "not owned by root; sshd would refuse the lab's keys",
                    hint="choose a root such as /var/lib/forge-lab",
                )


class Lab:
    """A fleet of hosts on this machine: one netns, sshd and (GPU hosts) dockerd each."""

    def __init__(self, config: LabConfig | None = None, progress: Progress | None = None):
        self.config = config or LabConfig()
        self.progress: Progress = progress or no_progress

    @classmethod
    def at(cls, root: Path | str | None = None, progress: Progress | None = None) -> Lab:
        """The lab recorded under ``root`` (its own config), or a default one there."""
        path = Path(root) if root else default_root()
        data = state.load(path.absolute())
        cfg = state.config_from(path.absolute(), data) if data else LabConfig(root=path)
        return cls(cfg, progress)

    # Read-only facts ---------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.config.root

    @property
    def inventory_path(self) -> Path:
        return self.config.inventory

    @property
    def identity_file(self) -> Path:
        return self.config.identity_file

    @property
    def known_hosts(self) -> Path:
        return self.config.known_hosts

    @property
    def gpu_hosts(self) -> list[str]:
        return [h.name for h in self.config.gpu_hosts()]

    def address(self, host: str) -> str:
        try:
            return self.config.host(host).address
        except KeyError:
            raise LabError(
                f"the lab has no host {host!r}", hint="hosts are data, " + ", ".join(self.gpu_hosts)
            ) from None

    def ssh_argv(self, host: str, *command: str, options: tuple[str, ...] = ()) -> list[str]:
        """``ssh`` (OpenSSH) to a lab host as the lab user, its host key checked against the
        lab's known_hosts; ``command`` is an argv list quoted by :mod:`forge.shell`."""
        return [
            "ssh",
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-i",
            str(self.identity_file),
            *options,
            f"{self.config.user}@{self.address(host)}",
            "--",
            shell.render(command),
        ]

    # Up ----------------------------------------------------------------------------------
    def up(self) -> None:
        """Bring the lab up, or finish bringing it up; a no-op on a running lab."""
        cfg = self.config
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, sshd, dockerd)", hint="run as root, e.g. with sudo")
        require(*TOOLS)
        old = state.load(cfg.root)
        if old and old.get("hosts") != cfg.hosts:
            raise LabError(
                f"the lab at {cfg.root} has {old.get('hosts')} GPU hosts, not {cfg.hosts}",
                hint=f"run `forge lab down --root {cfg.root}` first, or pass --hosts {old.get('hosts')}",
            )
        _check_root_path(cfg.root)
        state.claim_network(cfg)
        state.save(cfg)
        cfg.root.mkdir(parents=True, exist_ok=True)
        cfg.root.chmod(0o755)

        self.progress("user and keys")
        state.save(cfg, created_user=users.ensure_user(cfg))
        users.ensure_keypair(cfg)
        state.save(cfg, added_fuse_allow_other=fuse.ensure_user_allow_other())
        old_mode = fuse.ensure_dev_fuse_open()
        if old_mode is not None:
            state.save(cfg, dev_fuse_mode=old_mode)

        self.progress(f"network: bridge {cfg.bridge} {cfg.bridge_address}/{cfg.prefixlen}")
        netns.ensure_bridge(cfg)
        netns.ensure_firewall(cfg)
        host_keys: dict[str, str] = {}
        for host in cfg.all_hosts():
            netns.ensure_host_network(cfg, host)
            cfg.host_dir(host.name).mkdir(parents=True, exist_ok=True)
            host_keys[host.address] = sshd.ensure_config(cfg, host.name)
        users.write_known_hosts(cfg, host_keys)
        users.install_user_ssh(cfg)
        users.write_profile(cfg)
        self._ensure_data_dir()

        for host in cfg.gpu_hosts():
            cfg.bin_dir(host.name).mkdir(parents=True, exist_ok=True)
            gpus.install(cfg, host.name)
            if not cfg.gpu_state(host.name).exists():
                gpus.write_state(cfg, host.name, gpus.default_state(host.name))
        self.progress("starting dockerd on " + ", ".join(self.gpu_hosts))
        self._each(lambda h: dockerd.start(cfg, h), self.gpu_hosts)
        self.progress("starting sshd on every host")
        for host in cfg.all_hosts():
            sshd.start(cfg, host.name)
        inventory.write(cfg, users.user_home(cfg))
        self.progress(f"lab up: inventory {cfg.inventory}")

    def _ensure_data_dir(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        marker = cfg.data_dir / DATA_MARKER
        if not marker.exists():
            marker.write_text(DATA_MARKER_CONTENT)
        run(["chown", f"{cfg.user}:{cfg.user}", str(cfg.data_dir), str(marker)])

    @staticmethod
    def _each(fn: Callable[[str], T], hosts: list[str]) -> list[T]:
        """Run ``fn`` for every host at once; raise the first failure after all finish."""
        if not hosts:
            return []
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            futures = [pool.submit(fn, h) for h in hosts]
        return [f.result() for f in futures]

    # Status ------------------------------------------------------------------------------
    def status(self) -> LabStatus:
        cfg = self.config
        if not cfg.state_file.exists():
            return LabStatus(root=str(cfg.root), exists=False, bridge=False, hosts=[])
        hosts = []
        for host in cfg.all_hosts():
            hosts.append(
                HostStatus(
                    name=host.name,
                    address=host.address,
                    netns=netns.netns_exists(host.netns),
                    sshd=sshd.pid(cfg, host.name) is not None,
                    dockerd=(dockerd.ping(cfg.docker_socket(host.name)) if host.gpu else None),
                )
            )
        return LabStatus(
            root=str(cfg.root), exists=cfg.state_file.exists(), bridge=netns.link_exists(cfg.bridge), hosts=hosts
        )

    # Down --------------------------------------------------------------------------------
    def down(self, *, purge_cache: bool = False) -> None:
        """Remove everything the lab created, even when it is half built. Keeps the base
        image cache (``<root>/cache``) unless ``purge_cache``."""
        cfg = self.config
        if os.geteuid() != 0:
            raise LabError("taking the lab down needs root", hint="run as root")
        recorded = state.load(cfg.root)
        if recorded is None:
            # Without its record, the names below could be another lab's: touch nothing.
            self.progress(f"no lab recorded at {cfg.state_file}; nothing to take down")
            return
        names = {h.netns for h in cfg.all_hosts()}
        stray = [
            n
            for n in netns.list_netns(cfg.netns_prefix)
            if n[len(cfg.netns_prefix) :] == "data" or n[len(cfg.netns_prefix) :].removeprefix("gpu").isdigit()
        ]
        self.progress("stopping dockerd (and its containers)")
        self._each(lambda h: dockerd.stop(cfg, h), self.gpu_hosts)

        # FUSE mounts first, while their sshfs still answers; then every process.
        for point, fstype in mounts.mounts_under(cfg.root):
            if fstype.startswith("fuse"):
                run(["umount", point], check=False, timeout=30)
        self.progress("stopping every process of the lab")
        pids: set[int] = set()
        for name in names | set(stray):
            pids |= netns.netns_pids(name)
        if cfg.root.exists():
            pids |= pids_mentioning(str(cfg.root) + "/", DETACHED)
        kill_all(with_descendants(pids))

        left = mounts.unmount_all(cfg.root)
        if left:
            raise LabError(
                f"could not unmount {', '.join(left)}",
                hint="find the user with `fuser -vm MOUNTPOINT`, then run down again",
            )
        self.progress("removing namespaces, bridge and firewall rules")
        for host in cfg.all_hosts():
            netns.remove_host_network(host)
        for name in stray:
            if netns.netns_exists(name):
                run(["ip", "netns", "del", name])
        netns.remove_bridge(cfg)
        netns.remove_firewall(cfg)
        state.release_network(cfg)
        if recorded.get("created_user"):
            users.remove_user(cfg.user)
        if recorded.get("added_fuse_allow_other"):
            fuse.remove_user_allow_other()
        if isinstance(recorded.get("dev_fuse_mode"), int):
            fuse.restore_dev_fuse(recorded["dev_fuse_mode"])
        if cfg.root.exists():
            for entry in cfg.root.iterdir():
                if entry.name == "cache" and not purge_cache:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            if purge_cache:
                cfg.root.rmdir()
        self.progress(f"lab at {cfg.root} is down")

    # Knobs -------------------------------------------------------------------------------
    def set_gpus(self, host: str, gpu_state: dict[str, Any] | None) -> None:
        """Give a GPU host this fake GPU state, or with ``None`` no nvidia-smi at all."""
        self._gpu_host(host)
        gpus.set_gpus(self.config, host, gpu_state)

    def reset_gpus(self, host: str) -> None:
        """Give a GPU host back its default state: four idle GPUs with UUIDs of its own."""
        self._gpu_host(host)
        gpus.install(self.config, host)
        gpus.write_state(self.config, host, gpus.default_state(host))

    def stop_sshd(self, host: str) -> None:
        self.address(host)
        sshd.stop(self.config, host)

    def start_sshd(self, host: str) -> None:
        self.address(host)
        sshd.start(self.config, host)

    @contextmanager
    def host_down(self, host: str) -> Iterator[None]:
        """The host's sshd is stopped inside the block and started again after it."""
        self.stop_sshd(host)
        try:
            yield
        finally:
            self.start_sshd(host)

    def docker(
        self, host: str, *args: str, check: bool = False, timeout: float | None = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against a GPU host's daemon, from this machine."""
        self._gpu_host(host)
        return dockerd.docker(self.config, host, *args, check=check, timeout=timeout)

    def ensure_base_image(self) -> Path:
        return image.ensure_base_image(self.config, self.progress)

    def load_base_image(self, host: str) -> None:
        self._gpu_host(host)
        image.load_base_image(self.config, host, self.progress)

    def gpu_hook_records(self, host: str) -> list[dict[str, Any]]:
        """What the stub NVIDIA hook recorded on this host, oldest first."""
        self._gpu_host(host)
        return dockerd.hook_records(self.config, host)

    def _gpu_host(self, host: str) -> None:
        if host not in self.gpu_hosts:
            raise LabError(f"{host!r} is not a GPU host of the lab", hint="GPU hosts are " + ", ".join(self.gpu_hosts))

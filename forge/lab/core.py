"""The lab as one object: ``Lab(config).up()``, ``.status()``, ``.down()`` and the knobs
tests turn (GPU state, one host's sshd, the base image)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forge import shell
from forge.lab import (
    bringup,
    dockerd,
    fuse,
    gpus,
    holders,
    image,
    latency,
    mounts,
    netns,
    registry,
    sshd,
    state,
    users,
)
from forge.lab.bringup import each
from forge.lab.config import JUMP_HOST, LabConfig, default_root
from forge.lab.errors import LabError
from forge.lab.proc import Progress, kill_all, no_progress, pids_mentioning, run, with_descendants
from forge.transport.base import CommandResult

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
    "tini",
}


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    netns: bool
    sshd: bool
    dockerd: bool | None  # None on the data and jump hosts, which have no daemon
    role: str = "gpu"  # gpu, data or jump
    flavor: str | None = None  # the Docker engine flavor of a GPU host
    engine: str | None = None  # the version its daemon reports, when it answers

    @property
    def up(self) -> bool:
        return self.netns and self.sshd and self.dockerd is not False


@dataclass(frozen=True)
class LabStatus:
    root: str
    exists: bool
    bridge: bool
    hosts: list[HostStatus]
    bastion: bool = False

    @property
    def up(self) -> bool:
        return self.exists and self.bridge and bool(self.hosts) and all(h.up for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["up"] = self.up
        for h, hd in zip(self.hosts, d["hosts"], strict=True):
            hd["up"] = h.up
        return d


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

    @property
    def bastion(self) -> bool:
        return self.config.bastion

    @property
    def other_user(self) -> str:
        return self.config.other_user

    def flavor(self, host: str) -> str:
        """The Docker engine flavor of a GPU host (see :mod:`forge.lab.flavors`)."""
        self._gpu_host(host)
        return self.config.host(host).flavor or ""

    def address(self, host: str) -> str:
        """Where the host's sshd listens: behind a bastion, an inner address only the jump
        host (and the other hosts) reach."""
        try:
            return self.config.host(host).address
        except KeyError:
            names = ["data", *self.gpu_hosts] + ([JUMP_HOST] if self.bastion else [])
            raise LabError(f"the lab has no host {host!r}", hint="hosts are " + ", ".join(names)) from None

    def ssh_argv(self, host: str, *command: str, options: tuple[str, ...] = (), user: str | None = None) -> list[str]:
        """``ssh`` (OpenSSH) to a lab host as the lab user (or ``user``: the other user), its
        host key checked against the lab's known_hosts; ``command`` is an argv list quoted
        by :mod:`forge.shell`. Behind a bastion, through the jump host by the lab's
        ssh_config (``-F``: the jump hop is checked with the same settings)."""
        cfg = self.config
        user = user or cfg.user
        address = self.address(host)
        config, target = (str(cfg.ssh_config_of(user)), host) if cfg.bastion else ("none", address)
        return [
            "ssh",
            "-F",
            config,
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
            str(cfg.identity_of(user)),
            *options,
            f"{user}@{target}",
            "--",
            shell.render(command),
        ]

    # Up ----------------------------------------------------------------------------------
    def up(self) -> None:
        """Bring the lab up, or finish bringing it up; a no-op on a running lab."""
        cfg = self.config
        bringup.check(cfg)
        state.claim_network(cfg)
        state.save(cfg)
        cfg.root.mkdir(parents=True, exist_ok=True)
        cfg.root.chmod(0o755)
        self.progress(f"users {cfg.user} and {cfg.other_user} (group {cfg.docker_group}) and keys")
        bringup.users_and_keys(cfg)
        behind = f"; hosts behind jump host {cfg.jump_host().address} on {cfg.inner_network}" if cfg.bastion else ""
        self.progress(f"network: bridge {cfg.bridge} {cfg.bridge_address}/{cfg.prefixlen}{behind}")
        bringup.network(cfg)
        bringup.engines(cfg, self.progress)
        self.progress("starting sshd on every host")
        bringup.serve(cfg)
        self.progress(f"lab up: inventory {cfg.inventory}")

    def set_latency(self, delay_ms: float) -> None:
        """Delay every SSH link from this machine into the lab by ``delay_ms`` each way (0: no
        delay): forge/lab/latency.py. Replaces the delay set before."""
        cfg = self.config
        netns.remove_delay(cfg)
        latency.stop(cfg.root)
        if delay_ms > 0:
            latency.start(cfg.root, cfg.network, delay_ms)
            netns.add_delay(cfg, latency.port_of(cfg.network))
            self.progress(f"SSH links from this machine delayed by {delay_ms:g} ms each way")
        data = state.load(cfg.root) or {}
        data["latency_ms"] = delay_ms
        state.write(cfg, data)

    # Status ------------------------------------------------------------------------------
    def status(self) -> LabStatus:
        cfg = self.config
        if not cfg.state_file.exists():
            return LabStatus(root=str(cfg.root), exists=False, bridge=False, hosts=[])
        hosts = []
        for host in cfg.all_hosts():
            sock = cfg.docker_socket(host.name)
            up = dockerd.ping(sock) if host.gpu else None
            hosts.append(
                HostStatus(
                    name=host.name,
                    address=host.address,
                    netns=netns.netns_exists(host.netns),
                    sshd=sshd.pid(cfg, host.name) is not None,
                    dockerd=up,
                    role=host.role,
                    flavor=host.flavor,
                    engine=dockerd.server_version(sock) if up else None,
                )
            )
        return LabStatus(
            root=str(cfg.root),
            exists=cfg.state_file.exists(),
            bridge=netns.link_exists(cfg.bridge) and (not cfg.bastion or netns.link_exists(cfg.inner_bridge)),
            hosts=hosts,
            bastion=cfg.bastion,
        )

    # Down --------------------------------------------------------------------------------
    def down(self, *, purge_cache: bool = False) -> None:
        """Remove everything the lab created, even when it is half built. Keeps the cache
        (``<root>/cache``: base images, engine roots) unless ``purge_cache``."""
        cfg = self.config
        if os.geteuid() != 0:
            raise LabError("taking the lab down needs root", hint="run as root")
        recorded = state.load(cfg.root)
        if recorded is None:
            # Without its record, the names below could be another lab's: touch nothing.
            self.progress(f"no lab recorded at {cfg.state_file}; nothing to take down")
            return
        self.progress("stopping dockerd (and its containers)")
        each(lambda h: dockerd.stop(cfg, h), self.gpu_hosts)
        self._stop_processes()
        latency.stop(cfg.root)
        self.progress("removing namespaces, bridges and firewall rules")
        self._remove_network()
        self._undo_system_changes(recorded)
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

    def _stray_netns(self) -> list[str]:
        """Namespaces of this lab's naming, whatever its recorded size (a half-built lab)."""
        prefix = self.config.netns_prefix
        return [
            n
            for n in netns.list_netns(prefix)
            if n[len(prefix) :] in ("data", JUMP_HOST) or n[len(prefix) :].removeprefix("gpu").isdigit()
        ]

    def _stop_processes(self) -> None:
        """FUSE mounts first, while their sshfs still answers; then every process of the lab;
        then every mount under its root."""
        cfg = self.config
        for point, fstype in mounts.mounts_under(cfg.root):
            if fstype.startswith("fuse"):
                run(["umount", point], check=False, timeout=30)
        self.progress("stopping every process of the lab")
        pids: set[int] = set()
        for name in {h.netns for h in cfg.all_hosts()} | set(self._stray_netns()):
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

    def _remove_network(self) -> None:
        cfg = self.config
        stray = self._stray_netns()
        for host in cfg.all_hosts():
            netns.remove_host_network(cfg, host)
        for name in stray:
            if netns.netns_exists(name):
                run(["ip", "netns", "del", name])
        if netns.link_exists(cfg.jump_inner_veth):
            run(["ip", "link", "del", cfg.jump_inner_veth], check=False)
        netns.remove_bridges(cfg)
        netns.remove_firewall(cfg)
        state.release_network(cfg)

    def _undo_system_changes(self, recorded: dict[str, Any]) -> None:
        """Users, groups and FUSE settings, as far as this lab changed them."""
        cfg = self.config
        if recorded.get("created_user"):
            users.remove_user(cfg.user)
        if recorded.get("created_other_user"):
            users.remove_user(cfg.other_user)
        if recorded.get("created_docker_group"):
            users.remove_group(cfg.docker_group)
        if recorded.get("added_fuse_allow_other"):
            fuse.remove_user_allow_other()
        if isinstance(recorded.get("dev_fuse_mode"), int):
            fuse.restore_dev_fuse(recorded["dev_fuse_mode"])
        trust = recorded.get("registry_trust")
        if isinstance(trust, list):
            registry.remove_trust([str(d) for d in trust])

    # Knobs -------------------------------------------------------------------------------
    def set_gpus(self, host: str, gpu_state: dict[str, Any] | None) -> None:
        """Give a GPU host this fake GPU state, or with ``None`` no nvidia-smi at all."""
        self._gpu_host(host)
        gpus.set_gpus(self.config, host, gpu_state)

    def gpu_state(self, host: str) -> dict[str, Any] | None:
        """The GPU state the host's nvidia-smi replays (None: no nvidia-smi)."""
        self._gpu_host(host)
        return gpus.read_state(self.config, host)

    def load_gpus(
        self, host: str, indexes: list[int], *, utilization_pct: int, memory_used_mib: int, user: str | None = None
    ) -> dict[str, Any]:
        """Put these GPUs of the host at this utilization and memory used (0, 0: idle), held by
        a process of ``user`` when one is named (their earlier holders ended); the state
        written. A host without nvidia-smi gets its default GPUs first."""
        current = self.gpu_state(host)
        if current is None or current.get("mode", "ok") != "ok":
            current = gpus.default_state(host)
        new = gpus.with_load(current, indexes, utilization_pct=utilization_pct, memory_used_mib=memory_used_mib)
        uuids = [g["uuid"] for g in new["gpus"] if g["index"] in set(indexes)]
        holders.release(self.config, host, set(uuids))
        pid = None
        if user is not None:
            pid = holders.start(self.config, host, self.config.host(host).netns, user, uuids)
        new = gpus.with_holder(new, uuids, pid, memory_used_mib)
        gpus.set_gpus(self.config, host, new)
        return new

    def mig_gpus(self, host: str, indexes: list[int]) -> dict[str, Any]:
        """Put these GPUs of the host in MIG mode, split as the captured H200 (gpus.MIG_LAYOUT)."""
        current = self.gpu_state(host)
        if current is None or current.get("mode", "ok") != "ok":
            current = gpus.default_state(host)
        uuids = {g["uuid"] for g in current["gpus"] if g["index"] in set(indexes)}
        holders.release(self.config, host, uuids)
        new = gpus.with_mig(current, indexes)
        gpus.set_gpus(self.config, host, new)
        return new

    def load_slice(
        self, host: str, index: int, device: int, *, memory_used_mib: int, user: str | None = None
    ) -> dict[str, Any]:
        """MIG device ``device`` of GPU ``index`` used (``memory_used_mib``) by a process of
        ``user`` (None: by no process; memory 0 frees it)."""
        current = self.gpu_state(host)
        if current is None:
            raise LabError(f"{host} has no nvidia-smi", hint=f"forge lab gpu {host} --reset")
        holders.release(self.config, host, {f"{index}/{device}"})
        pid = None
        if user is not None and memory_used_mib > 0:
            pid = holders.start(self.config, host, self.config.host(host).netns, user, [f"{index}/{device}"])
        try:
            new = gpus.with_slice_holder(current, index, device, pid, memory_used_mib)
        except ValueError:
            if pid is not None:
                holders.release(self.config, host, {f"{index}/{device}"})
            raise
        gpus.set_gpus(self.config, host, new)
        return new

    def reset_gpus(self, host: str) -> None:
        """Give a GPU host back its default state: four idle GPUs with UUIDs of its own."""
        self._gpu_host(host)
        holders.release(self.config, host)
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

    def docker(self, host: str, *args: str, check: bool = False, timeout: float | None = 300) -> CommandResult:
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

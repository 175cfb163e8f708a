"""The steps of ``Lab.up``, in order: check, users and keys, network and sshd configs,
engines, then sshd and the inventory. Each step is idempotent, so ``up`` finishes a
half-built lab; each records in lab.json what it changed outside the lab's root."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from forge.lab import (
    dockerd,
    fuse,
    gpus,
    inventory,
    mounts,
    netns,
    registry,
    sshconfig,
    sshd,
    state,
    suiteroot,
    users,
)
from forge.lab.config import DATA_MARKER, DATA_MARKER_CONTENT, LabConfig
from forge.lab.errors import LabError
from forge.lab.proc import Progress, require, run

TOOLS = [
    "ip",
    "nsenter",
    "unshare",
    "mount",
    "iptables",
    "useradd",
    "userdel",
    "usermod",
    "groupadd",
    "groupdel",
    "ssh-keygen",
    "sshd",
    "dockerd",
    "docker",
    "containerd",
    "runc",
]

T = TypeVar("T")


def each(fn: Callable[[str], T], hosts: list[str]) -> list[T]:
    """Run ``fn`` for every host at once; raise the first failure after all finish."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = [pool.submit(fn, h) for h in hosts]
    return [f.result() for f in futures]


def check(cfg: LabConfig) -> None:
    """Refuse early: not root, tools missing, a lab of other settings at this root, or a
    root sshd would refuse keys under."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, sshd, dockerd)", hint="run as root, e.g. with sudo")
    require(*TOOLS)
    old = state.load(cfg.root)
    changed = state.differences(old, cfg) if old else []
    if changed:
        raise LabError(
            f"the lab at {cfg.root} has " + "; ".join(changed),
            hint=f"run `forge lab down --root {cfg.root}` first, or bring it up with the settings it has",
        )
    _check_root_path(cfg.root)


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


def users_and_keys(cfg: LabConfig) -> None:
    state.save(cfg, created_user=users.ensure_user(cfg.user, cfg.home))
    state.save(cfg, created_other_user=users.ensure_user(cfg.other_user, cfg.other_home))
    state.save(cfg, created_docker_group=users.ensure_docker_group(cfg))
    users.ensure_keypairs(cfg)
    state.save(cfg, added_fuse_allow_other=fuse.ensure_user_allow_other())
    old_mode = fuse.ensure_dev_fuse_open()
    if old_mode is not None:
        state.save(cfg, dev_fuse_mode=old_mode)


def network(cfg: LabConfig) -> None:
    """Bridges, firewall, each host's namespace and sshd config; the known_hosts of their
    keys, each user's ~/.ssh and profile; behind a bastion, the ssh_config."""
    netns.ensure_bridges(cfg)
    netns.ensure_firewall(cfg)
    host_keys: dict[str, str] = {}
    for host in cfg.all_hosts():
        netns.ensure_host_network(cfg, host)
        cfg.host_dir(host.name).mkdir(parents=True, exist_ok=True)
        host_keys[host.address] = sshd.ensure_config(cfg, host.name)
    users.write_known_hosts(cfg, host_keys)
    users.install_user_ssh(cfg)
    users.write_profiles(cfg)
    if cfg.bastion:
        sshconfig.write(cfg)
    _ensure_data_dir(cfg)


def _ensure_data_dir(cfg: LabConfig) -> None:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    marker = cfg.data_dir / DATA_MARKER
    if not marker.exists():
        marker.write_text(DATA_MARKER_CONTENT)
    run(["chown", f"{cfg.user}:{cfg.user}", str(cfg.data_dir), str(marker)])


def engines(cfg: LabConfig, progress: Progress) -> None:
    """Each GPU host's nvidia-smi and Docker daemon, of its flavor. Chrooted engines first
    get their suite's root (built once) and the lab root as a shared mount, so that what
    is mounted below it later (a user's sshfs) reaches them."""
    gpu_hosts = cfg.gpu_hosts()
    for host in gpu_hosts:
        cfg.bin_dir(host.name).mkdir(parents=True, exist_ok=True)
        gpus.install(cfg, host.name)
        if not cfg.gpu_state(host.name).exists():
            gpus.write_state(cfg, host.name, gpus.default_state(host.name))
    suites = suiteroot.suites_of(cfg)
    for suite in suites:
        suiteroot.ensure(cfg, suite, progress)
    if suites:
        mounts.ensure_shared(cfg.root)
    progress("starting dockerd on " + ", ".join(f"{h.name} ({h.flavor})" for h in gpu_hosts))
    each(lambda h: dockerd.start(cfg, h), [h.name for h in gpu_hosts])


def serve(cfg: LabConfig) -> None:
    """Start every host's sshd and the registry (where installed), write the inventory."""
    for host in cfg.all_hosts():
        sshd.start(cfg, host.name)
    if registry.available():
        created = registry.start(cfg, suiteroot.paths(cfg))
        data = state.load(cfg.root) or {}
        data["registry_trust"] = sorted({*data.get("registry_trust", []), *map(str, created)})
        state.write(cfg, data)
    inventory.write(cfg, users.user_home(cfg))

"""The root file system of a newer Debian (e.g. trixie) that a lab host's Docker engine runs
from: built once with debootstrap from this machine's mirror, cached as a directory under
``<root>/cache/``, and entered by each daemon in its own mount and pid namespace.

The daemon sees the lab's root at the same path inside (a bind mount that receives the mounts
made later outside, e.g. a user's sshfs), so its socket, data root, exec root, hook and the
paths users bind into containers are where they are for every other flavor.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from forge.lab import flavors
from forge.lab.config import LabConfig
from forge.lab.mirror import debian_mirror
from forge.lab.mounts import unmount_all
from forge.lab.proc import Progress, no_progress, require, run

#: What the engine's root holds: the engine, its firewall tool, and python3 for the stub
#: NVIDIA hook (which runs inside, as the daemon's child).
PACKAGES = ("docker.io", "iptables", "ca-certificates", "python3-minimal")

#: Run as ``sh -c ENTER sh ROOTFS LABROOT ARGV...`` in a new mount namespace whose mounts are
#: slaves of this machine's (``unshare --propagation slave``) and a new pid namespace: the
#: root (read-only: hosts and labs share it; bound onto itself, else builds fail to remount
#: it) with /dev, /proc, /sys, its own /run, /tmp and /opt (containerd's), and the lab root at
#: its own path; then tini as pid 1 (it reaps the shims the engine leaves behind and passes
#: signals on) runs the daemon. A constant: every value comes in as an argument.
#:
#: The root is made the namespace's own root with ``pivot_root``, and this machine's root is
#: detached from it, not merely ``chroot``-ed into: each container's mount namespace is a copy
#: of the daemon's, and runc's own ``pivot_root`` swaps only the mount its caller stands on.
#: Under a chroot that is the engine root's mount, so the namespace's root stays this
#: machine's ``/``, and ``docker exec`` (runc joins the container's mount namespace, which
#: puts it at that namespace's root) ran in this machine's root file system, as root.
ENTER = """set -eu
r=$1 lab=$2
shift 2
mount --bind "$r" "$r"
mount -o remount,bind,ro "$r"
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount -t tmpfs -o mode=755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
mount -t tmpfs -o mode=755 tmpfs "$r/opt"
mount --rbind "$lab" "$r$lab"
cd "$r"
pivot_root . .
umount -l .
cd /
exec /usr/bin/tini -s -- "$@"
"""


def path(cfg: LabConfig, suite: str) -> Path:
    return cfg.cache_dir / f"debian-{suite}-docker"


def suites_of(cfg: LabConfig) -> list[str]:
    """The suites whose engine roots the lab's chrooted flavors run from."""
    return flavors.suites(tuple(h.flavor for h in cfg.gpu_hosts() if h.flavor))


def paths(cfg: LabConfig) -> list[Path]:
    """The engine roots the lab's chrooted daemons run in (what they see as /)."""
    return [path(cfg, s) for s in suites_of(cfg)]


def ensure(cfg: LabConfig, suite: str, progress: Progress = no_progress) -> Path:
    """The engine root of ``suite``, built once (about a minute) and kept in the cache; the
    lab root's path is made inside it, for the bind mount."""
    root = path(cfg, suite)
    if not root.exists():
        _build(cfg, suite, root, progress)
    (root / str(cfg.root).lstrip("/")).mkdir(parents=True, exist_ok=True)
    return root


def _build(cfg: LabConfig, suite: str, root: Path, progress: Progress) -> None:
    require("debootstrap")
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.cache_dir / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.exists():
            return
        build = root.with_name(root.name + ".build")
        _remove(build)
        mirror = debian_mirror()
        progress(f"building a Debian {suite} root for its Docker engine from {mirror} (about a minute)")
        try:
            run(
                ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), suite, str(build), mirror],
                timeout=900,
                hint=f"see {build}/debootstrap/debootstrap.log",
            )
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (build / sub).glob("*"):
                    if item.is_file():
                        item.unlink()
            os.replace(build, root)
        finally:
            _remove(build)
    progress(f"Debian {suite} engine root cached at {root}")


def _remove(tree: Path) -> None:
    if tree.exists():
        unmount_all(tree)
        shutil.rmtree(tree, ignore_errors=True)


def enter_argv(cfg: LabConfig, suite: str, command: list[str]) -> list[str]:
    """``command`` (paths as seen inside) run from the suite's root, as described above."""
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--propagation",
        "slave",
        "--",
        "sh",
        "-c",
        ENTER,
        "sh",
        str(path(cfg, suite)),
        str(cfg.root),
        *command,
    ]

"""The lab's share of the dev image: a compiler image, built offline, for the uid helper.

The dev image compiles its uid helper (docker/dev/fixuid.c) in a first build stage from
``TOOLCHAIN_IMAGE``. PyTorch's devel images have gcc; the lab's minimal Debian base has not,
and lab containers cannot reach a package mirror. So, like the lab's base image, a Debian
root with gcc is made once with debootstrap from the mirror this machine's apt uses, cached
as a tar under the lab's cache directory, and imported into a host's daemon on demand.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from forge.lab import Lab
from forge.lab.errors import LabCommandFailed
from forge.lab.image import SUITE, debian_mirror
from forge.lab.mounts import unmount_all
from forge.lab.proc import Progress, no_progress, require, run

TOOLCHAIN_IMAGE = f"forge-lab/debian-gcc:{SUITE}"
PACKAGES = ["gcc", "libc6-dev"]


def toolchain_tar(lab: Lab) -> Path:
    return lab.config.cache_dir / f"debian-{SUITE}-gcc.tar"


def ensure_toolchain_tar(lab: Lab, progress: Progress = no_progress) -> Path:
    """Build the compiler root once (about 40 s) and return the cached tar."""
    tar = toolchain_tar(lab)
    if tar.exists():
        return tar
    require("debootstrap", "tar")
    cache = lab.config.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".toolchain.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar.exists():
            return tar
        rootfs = cache / "toolchain.build"
        if rootfs.exists():
            unmount_all(rootfs)
            shutil.rmtree(rootfs)
        mirror = debian_mirror()
        progress(f"building {TOOLCHAIN_IMAGE} with debootstrap from {mirror} (about a minute)")
        try:
            run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(rootfs), mirror],
                timeout=900, hint=f"see {rootfs}/debootstrap/debootstrap.log")
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / sub).glob("*"):
                    if item.is_file():
                        item.unlink()
            tmp = tar.with_suffix(".tmp")
            run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tmp), "."], timeout=600)
            os.replace(tmp, tar)
        finally:
            if rootfs.exists():
                unmount_all(rootfs)
                shutil.rmtree(rootfs, ignore_errors=True)
    return tar


def load_toolchain_image(lab: Lab, host: str, progress: Progress = no_progress) -> str:
    """Make :data:`TOOLCHAIN_IMAGE` present on a GPU host's daemon; return its name."""
    if lab.docker(host, "image", "inspect", TOOLCHAIN_IMAGE).returncode == 0:
        return TOOLCHAIN_IMAGE
    tar = ensure_toolchain_tar(lab, progress)
    progress(f"{host}: importing {TOOLCHAIN_IMAGE}")
    argv = ["docker", "-H", lab.config.docker_host(host), "import", "-", TOOLCHAIN_IMAGE]
    with open(tar, "rb") as f:
        proc = subprocess.run(argv, stdin=f, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise LabCommandFailed(" ".join(argv), proc.returncode, proc.stderr)
    return TOOLCHAIN_IMAGE


def load_lab_images(lab: Lab | None = None, progress: Progress = print) -> None:
    """Load the base and compiler images on every GPU host of the lab (default: the usual root)."""
    lab = lab or Lab.at()
    for host in lab.gpu_hosts:
        lab.load_base_image(host)
        load_toolchain_image(lab, host, progress)
    progress(f"{', '.join(lab.gpu_hosts)}: forge-lab/debian:{SUITE} and {TOOLCHAIN_IMAGE} loaded")

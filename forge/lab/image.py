"""The lab's base image: a minimal Debian root built offline with debootstrap, cached as a
tar under ``<root>/cache/``, imported into a lab host's daemon without any registry."""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from forge.lab.config import BASE_IMAGE, LabConfig
from forge.lab.dockerd import docker
from forge.lab.mirror import debian_mirror
from forge.lab.mounts import unmount_all
from forge.lab.proc import Progress, no_progress, require, run

SUITE = "bookworm"


@dataclass(frozen=True)
class RootImage:
    """An image made from a Debian root built with debootstrap (offline, from apt's mirror)."""

    name: str  # the image's name on lab hosts
    flavour: str  # names the cached tar
    packages: tuple[str, ...]  # debootstrap --include

    def tar(self, cfg: LabConfig) -> Path:
        return cfg.cache_dir / f"debian-{SUITE}-{self.flavour}.tar"


#: The lab's base image: what test containers and the dev image's lab build start from.
BASE = RootImage(BASE_IMAGE, "minbase", ("openssh-server", "sudo", "xauth", "python3"))
#: A compiler image: the dev image compiles its uid helper (forge/devimage/fixuid.c) in a first
#: build stage. PyTorch's devel images have gcc; the lab's minimal base has not, and lab
#: containers cannot reach a package mirror.
TOOLCHAIN = RootImage(f"forge-lab/debian-gcc:{SUITE}", "gcc", ("gcc", "libc6-dev"))


def cached_tar(cfg: LabConfig) -> Path:
    return BASE.tar(cfg)


def ensure_tar(cfg: LabConfig, image: RootImage, progress: Progress = no_progress) -> Path:
    """Build the root file system once (about 40 s) and return the cached tar."""
    tar = image.tar(cfg)
    if tar.exists():
        return tar
    require("debootstrap", "tar")
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.cache_dir / f".{image.flavour}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar.exists():
            return tar
        rootfs = cfg.cache_dir / f"{image.flavour}.build"
        if rootfs.exists():
            unmount_all(rootfs)
            shutil.rmtree(rootfs)
        mirror = debian_mirror()
        progress(f"building {image.name} with debootstrap from {mirror} (about a minute)")
        try:
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(image.packages),
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                timeout=900,
                hint=f"see {rootfs}/debootstrap/debootstrap.log",
            )
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
    progress(f"{image.name} cached at {tar}")
    return tar


def ensure_base_image(cfg: LabConfig, progress: Progress = no_progress) -> Path:
    """Build the base root file system once (about 40 s) and return the cached tar."""
    return ensure_tar(cfg, BASE, progress)


def has_image(cfg: LabConfig, host: str, image: str = BASE_IMAGE) -> bool:
    return docker(cfg, host, "image", "inspect", image, check=False).ok


def load_image(cfg: LabConfig, host: str, image: RootImage, progress: Progress = no_progress) -> str:
    """Make ``image`` present on a GPU host's daemon (``docker import`` of the cached tar)."""
    if has_image(cfg, host, image.name):
        return image.name
    tar = ensure_tar(cfg, image, progress)
    progress(f"{host}: importing {image.name}")
    argv = ["docker", "-H", cfg.docker_host(host), "import", "-", image.name]
    with open(tar, "rb") as f:
        run(argv, input=f, timeout=600, hint=f"is {host}'s dockerd up? try `forge lab status`")
    return image.name


def load_base_image(cfg: LabConfig, host: str, progress: Progress = no_progress) -> None:
    """Make ``forge-lab/debian:bookworm`` present on a GPU host's daemon."""
    load_image(cfg, host, BASE, progress)

"""The lab's share of the dev image: its compiler image on every GPU host of the lab.

The dev image compiles its uid helper (forge/devimage/fixuid.c) in a first build stage from a
toolchain image; on the lab that is :data:`forge.lab.image.TOOLCHAIN`, built offline like the
lab's base image.
"""

from __future__ import annotations

from forge.lab.core import Lab
from forge.lab.image import SUITE, TOOLCHAIN, load_image
from forge.lab.proc import Progress, no_progress

TOOLCHAIN_IMAGE = TOOLCHAIN.name


def load_toolchain_image(lab: Lab, host: str, progress: Progress = no_progress) -> str:
    """Make :data:`TOOLCHAIN_IMAGE` present on a GPU host's daemon; return its name."""
    return load_image(lab.config, host, TOOLCHAIN, progress)


def load_lab_images(lab: Lab | None = None, progress: Progress = print) -> None:
    """Load the base and compiler images on every GPU host of the lab (default: the usual root)."""
    lab = lab or Lab.at()
    for host in lab.gpu_hosts:
        lab.load_base_image(host)
        load_toolchain_image(lab, host, progress)
    progress(f"{', '.join(lab.gpu_hosts)}: forge-lab/debian:{SUITE} and {TOOLCHAIN_IMAGE} loaded")

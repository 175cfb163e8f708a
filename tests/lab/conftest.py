"""Fixtures of the lab tests (the `lab` fixture itself is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from tests.lab.imagekit import Images


@pytest.fixture()
def inv(lab: Any) -> inventory.Inventory:
    """The lab's inventory."""
    return inventory.load_file(Path(lab.inventory_path))


@pytest.fixture()
def images(lab: Any) -> Iterator[Images]:
    """Images built on gpu1 for one test, removed from every lab host at the end."""
    imgs = Images(lab)
    try:
        yield imgs
    finally:
        imgs.cleanup()


@contextmanager
def docker_down(lab: Any, host: str) -> Iterator[None]:
    """The host's Docker daemon is stopped inside the block (its sshd keeps running) and
    started again after it; its containers stay (those with a restart policy come back)."""
    import os
    import signal

    from forge.lab import dockerd
    from forge.lab.proc import pid_alive, wait_until

    cfg = lab.lab.config
    pid = dockerd.pid(cfg, host)
    assert pid is not None, f"{host}: no dockerd runs"
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not pid_alive(pid), 60, 0.2), f"{host}: dockerd did not stop"
    try:
        yield
    finally:
        dockerd.start(cfg, host)


@pytest.fixture(scope="module")
def env_lab(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The environments kit (tests/lab/envkit.py) for one test module."""
    from tests.lab.envkit import env_lab_kit

    yield from env_lab_kit(lab, tmp_path_factory)

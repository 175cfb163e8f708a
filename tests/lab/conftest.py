"""Fixtures of the lab tests (the `lab` fixture itself is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
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

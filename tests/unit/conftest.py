"""Unit tests never read the developer's own SSH setup: ``HOME`` is an empty directory of the
test's (``~/.ssh/config``, ``~/.ssh/known_hosts``, ``~/.config/forge``), and forge's own
lookups of the user's files see nothing but what a test writes there."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("FORGE_INVENTORY", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home

"""`forge sync --via registry`: gpu1 pushes to the lab's docker-registry (Docker Distribution
on the data host: TLS from the lab's CA, htpasswd auth), every target pulls at once; the hosts
use the lab user's docker login (forge/lab/registry.py), never a secret of forge's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from forge import inventory
from forge.lab import registry, suiteroot
from tests.lab.imagekit import Images, sync

pytestmark = pytest.mark.lab


@pytest.fixture()
def settings(lab: Any, inv: inventory.Inventory) -> inventory.RegistrySettings:
    if inv.registry.address is None:
        pytest.fail("the lab has no registry: install docker-registry, apache2-utils and openssl")
    return inv.registry


@contextmanager
def registry_down(lab: Any) -> Iterator[None]:
    registry.stop(lab.lab.config)
    try:
        yield
    finally:
        registry.start(lab.lab.config, suiteroot.paths(lab.lab.config))


@contextmanager
def wrong_login(lab: Any) -> Iterator[None]:
    cfg = lab.lab.config
    registry.login(cfg, "not-the-password")
    try:
        yield
    finally:
        registry.login(cfg, registry.password(cfg))


def test_push_once_pull_everywhere_and_only_new_layers_are_pushed(
    lab: Any, inv: inventory.Inventory, images: Images, settings: inventory.RegistrySettings
) -> None:
    v1 = images.on_top(images.base(), "v1", os.urandom(300_000))
    report = sync(inv, v1, ["gpu2", "gpu3", "gpu4"], via="registry", registry_settings=settings)
    for h in ("gpu2", "gpu3", "gpu4"):
        r = report.results[h]
        assert r.ok and r.value.via == "registry" and r.value.note == "", (r.reason, r.value)
        assert images.same(h, v1)
    assert report.pushed is not None and report.pushed.layers_pushed == 2
    assert report.pushed.name.startswith(f"{settings.address}/forge/")
    again = sync(inv, v1, ["gpu2"], via="registry", registry_settings=settings).results["gpu2"]
    assert again.ok and again.value.action == "current"
    v2 = images.on_top(v1, "v2", os.urandom(200_000))
    report = sync(inv, v2, ["gpu2"], via="registry", registry_settings=settings)
    assert report.results["gpu2"].ok and images.same("gpu2", v2)
    assert report.pushed is not None  # the registry had the two layers of v1
    assert (report.pushed.layers_pushed, report.pushed.layers_there) == (1, 2)


def test_a_registry_that_refuses_the_login_is_said_and_the_hosts_are_served_anyway(
    lab: Any, inv: inventory.Inventory, images: Images, settings: inventory.RegistrySettings
) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(100_000))
    with wrong_login(lab):
        report = sync(inv, ref, ["gpu2", "gpu3"], via="registry", registry_settings=settings)
    assert report.pushed is None
    for h in ("gpu2", "gpu3"):
        r = report.results[h]
        assert r.ok and r.value.via == "client", r.reason
        assert "refused the push" in r.value.note and f"docker login {settings.address}" in r.value.note, r.value.note
        assert images.same(h, ref)


def test_a_registry_that_is_down_is_said_and_the_hosts_are_served_anyway(
    lab: Any, inv: inventory.Inventory, images: Images, settings: inventory.RegistrySettings
) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(100_000))
    with registry_down(lab):
        report = sync(inv, ref, ["gpu2"], via="registry", registry_settings=settings)
    r = report.results["gpu2"]
    assert r.ok and r.value.via == "client", r.reason
    assert "refused the push" in r.value.note and "connection refused" in r.value.note.lower(), r.value.note
    assert images.same("gpu2", ref)

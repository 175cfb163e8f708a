"""forge sync from each Docker engine flavor of the lab to each other one (issue 11): Engine
20.10 (bookworm), Engine 26.1 with the classic store (trixie) and with the containerd image
store (trixie-containerd). Only the layers a target lacks are sent, what arrived is checked
before it is tagged (the image's ID differs between stores), a cut stream leaves nothing."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.fleet import Pool
from forge.images.runs import check_images
from forge.images.sync import sync_image
from tests.lab.imagekit import Images, _real_files, cut_at, cutting_pool, docker, sync

pytestmark = pytest.mark.lab

FLAVORS = ("bookworm", "trixie", "trixie-containerd")
BASE = "forge-lab/debian:bookworm"


@pytest.fixture(scope="module")
def by_flavor(lab: Any) -> dict[str, str]:
    """One GPU host of each flavor (the session lab has all three by default)."""
    hosts: dict[str, str] = {}
    for h in lab.hosts:
        hosts.setdefault(lab.flavor(h), h)
    missing = [f for f in FLAVORS if f not in hosts]
    if missing:
        pytest.skip(f"the session's lab has no {', '.join(missing)} host (FORGE_LAB_FLAVORS)")
    return hosts


def _identity(lab: Any, host: str, ref: str) -> str:
    r = lab.docker(host, "image", "inspect", "-f", "{{json .RootFS.Layers}} {{.Created}} {{json .Config.Cmd}}", ref)
    return r.stdout.strip() if r.returncode == 0 else ""


@pytest.fixture()
def built(
    lab: Any, by_flavor: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str, str]]:
    """A base of real files and an image of two layers on top, both made on the source
    flavor's host, unique to the test (no host has their layers yet); removed after."""
    source = by_flavor[request.param]
    repo = f"forge-test/flavors-{uuid.uuid4().hex[:10]}"
    base, tag = f"{repo}:base", f"{repo}:app"
    docker(lab, source, "import", "-", base, stdin=_real_files(4 << 20, repo))
    (tmp_path / "blob").write_bytes(os.urandom(300_000))
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\nCOPY blob /blob\n")
    r = lab.docker(source, "build", "-q", "-t", tag, str(tmp_path))
    assert r.returncode == 0, r.stderr
    try:
        yield source, base, tag
    finally:
        for h in by_flavor.values():
            lab.docker(h, "image", "rm", "-f", tag, base)


@pytest.mark.parametrize("built", FLAVORS, indirect=True, ids=[f"from-{f}" for f in FLAVORS])
def test_sync_from_this_flavor_to_the_others(lab: Any, by_flavor: dict[str, str], built: tuple[str, str, str]) -> None:
    source, base, tag = built
    inv = inventory.load_file(Path(lab.inventory_path))
    targets = [inv.host(h) for h in by_flavor.values() if h != source]
    with Pool() as pool:  # the base first, as forge would have shipped it before
        first = sync_image(base, source=inv.host(source), targets=targets, pool=pool, compress="none")
        assert [(r.value.action, r.value.layers_sent) for r in first.results] == [("send", 1)] * 2
        report = sync_image(tag, source=inv.host(source), targets=targets, pool=pool, compress="none")
    want = _identity(lab, source, tag)
    for r in report.results:
        assert r.ok, (r.host.name, r.reason)
        assert r.value.action == "send" and (r.value.layers_sent, r.value.layers_total) == (1, 2), r.host.name
        assert _identity(lab, r.host.name, tag) == want, r.host.name  # checked, then tagged
        listed = lab.docker(r.host.name, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert tag in listed, r.host.name  # a containerd store lists only complete images
    with Pool() as pool:
        again = sync_image(tag, source=inv.host(source), targets=targets, pool=pool)
        assert [r.value.action for r in again.results] == ["current", "current"]
        statuses = check_images([tag], source=inv.host(source), targets=targets, pool=pool)
    assert [s.status for s in statuses] == ["current", "current"]


def test_a_cut_stream_to_a_containerd_store_leaves_nothing_and_a_rerun_completes(
    lab: Any, by_flavor: dict[str, str], images: Images
) -> None:
    victim = by_flavor["trixie-containerd"]
    inv = inventory.load_file(Path(lab.inventory_path))
    ref = images.on_top(images.base(size=8 << 20), "v1", os.urandom(100_000))
    with cutting_pool(lab, victim, cut_at(400_000)) as pool:  # inside the base layer
        bad = sync(inv, ref, [victim], pool=pool).results[victim]
    assert not bad.ok and "connection" in bad.reason
    assert lab.docker(victim, "image", "inspect", ref).returncode != 0
    assert images.leftovers(victim) == []
    r = sync(inv, ref, [victim]).results[victim]
    assert r.ok and r.value.action == "send", r.reason
    assert images.same(victim, ref)


def test_a_containerd_target_holding_a_layer_under_another_blob_still_gets_it_whole(
    lab: Any, by_flavor: dict[str, str], tmp_path: Path
) -> None:
    """The target imported the base itself (a compressed blob), not from forge: the load that
    leaves the base out is hidden by the containerd store (its content is incomplete), so forge
    sends that host everything once more. Complete, listed and runnable in the end."""
    source, victim = by_flavor["bookworm"], by_flavor["trixie-containerd"]
    inv = inventory.load_file(Path(lab.inventory_path))
    lab.docker(victim, "image", "rm", "-f", BASE)
    base = lab.load_base_image(victim)  # imported there: another blob than forge's
    lab.load_base_image(source)
    tag = f"forge-test/flavors:{uuid.uuid4().hex[:10]}"
    (tmp_path / "Dockerfile").write_text(f'FROM {base}\nRUN echo mine > /mine\nCMD ["cat", "/mine"]\n')
    assert lab.docker(source, "build", "-q", "-t", tag, str(tmp_path)).returncode == 0
    try:
        with Pool() as pool:
            r = sync_image(tag, source=inv.host(source), targets=[inv.host(victim)], pool=pool).results[victim]
        assert r.ok and r.value.layers_sent == 2, r.reason  # the base went again: see forge.images.sync
        listed = lab.docker(victim, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert tag in listed
        assert lab.docker(victim, "run", "--rm", tag).stdout == "mine\n"
    finally:
        for h in (source, victim):
            lab.docker(h, "image", "rm", "-f", tag)

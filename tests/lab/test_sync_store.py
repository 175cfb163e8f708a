"""`forge sync` reading layers straight from the source daemon's layer store.

The source is this machine (a local inventory host) reading gpu1's daemon through its socket,
as root, so forge can read gpu1's data root: the path `forge sync` takes as root on a build
host. Images are built on gpu1 as in test_sync.py and removed from every host after.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.fleet import Pool
from forge.images.inspect import FORMAT, parse_image_line
from forge.images.layerstore import LayerStore, LayerStoreError, open_store, write_layer_tar
from forge.images.sync import sync_image
from forge.inventory import Host
from forge.transport import connect
from tests.lab.test_sync import SOURCE, Images, _cutting_pool, _docker

pytestmark = pytest.mark.lab


@pytest.fixture()
def inv(lab: Any) -> inventory.Inventory:
    return inventory.load_file(Path(lab.inventory_path))


@pytest.fixture()
def images(lab: Any) -> Iterator[Images]:
    imgs = Images(lab)
    try:
        yield imgs
    finally:
        imgs.cleanup()


@pytest.fixture()
def here(lab: Any) -> Host:
    """This machine, with gpu1's daemon as its Docker."""
    return Host(name="here", address="localhost", local=True, docker_host=lab.lab.config.docker_host(SOURCE))


def _sync(inv: inventory.Inventory, source: Host, ref: str, targets: list[str], pool: Pool | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    own = pool is None
    pool = pool or Pool()
    try:
        return sync_image(ref, source=source, targets=[inv.host(n) for n in targets], pool=pool, **kw)
    finally:
        if own:
            pool.close()


def _store(here: Host) -> LayerStore:
    with connect(here) as t:
        store, why = open_store(here, t)
    assert store is not None, why
    return store


def test_every_layer_of_a_real_image_is_reassembled_to_its_diff_id(lab: Any, here: Host, images: Images) -> None:
    """A Debian root file system (hard links, symlinks, setuid files, long paths) and a layer
    that deletes files and replaces a directory (whiteouts, an opaque directory), a non-UTF-8
    file name and an empty file: each layer's bytes hash to the diff ID the daemon recorded."""
    base = lab.load_base_image(SOURCE)
    ref = f"{images.repo}:tricky"
    run = (
        "rm -rf /usr/share/doc/apt /etc/motd && rm -rf /var/cache/apt && mkdir -p /var/cache/apt "
        "&& touch /var/cache/apt/new /empty && printf x > \"$(printf '/caf\\351')\" "
        "&& echo h > /h1 && ln /h1 /hardlink && ln -s /etc /etc-link "
        "&& mkdir -p /a/$(printf 'd%.0s' $(seq 1 120))/b && echo deep > /a/$(printf 'd%.0s' $(seq 1 120))/b/f"
    )
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "Dockerfile").write_text(f"FROM {base}\nRUN {run}\n")
        _docker(lab, SOURCE, "build", "-q", "-t", ref, d)
    images.ids.add(_docker(lab, SOURCE, "image", "inspect", "-f", "{{.Id}}", ref))
    image = parse_image_line(_docker(lab, SOURCE, "image", "inspect", "--format", FORMAT, ref))
    assert image is not None and len(image.layers) == 2
    store = _store(here)
    for chain, diff_id in zip(image.chains, image.layers, strict=True):
        layer = store.layer(chain, diff_id)
        digest = hashlib.sha256()
        assert write_layer_tar(layer, digest.update) == layer.size
        assert "sha256:" + digest.hexdigest() == diff_id


def test_a_fresh_host_gets_the_image_read_from_the_store(inv: inventory.Inventory, here: Host, images: Images) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(1000))
    report = _sync(inv, here, ref, ["gpu2"])
    r = report.results["gpu2"]
    assert r.ok, r.reason
    assert report.read == "store" and report.read_note == ""
    assert r.value.action == "send" and r.value.layers_sent == 2 and r.value.codec == "zstd"
    assert images.image_id("gpu2", ref) == images.image_id(SOURCE, ref)
    assert images.leftovers("gpu2") == []


def test_only_the_layers_a_host_lacks_are_read_and_sent(inv: inventory.Inventory, here: Host, images: Images) -> None:
    v1 = images.on_top(images.base(size=6 << 20), "v1", os.urandom(200_000))
    first = _sync(inv, here, v1, ["gpu3"], compress="none")
    assert first.results["gpu3"].ok, first.results["gpu3"].reason
    v2 = images.on_top(v1, "v2", os.urandom(300_000))
    report = _sync(inv, here, v2, ["gpu3", "gpu4"], compress="none")
    assert report.read == "store"
    part, whole = report.results["gpu3"], report.results["gpu4"]
    assert part.ok and whole.ok, (part.reason, whole.reason)
    assert part.value.layers_sent == 1 and whole.value.layers_sent == 3
    assert part.value.tar_bytes < 400_000 < 6 << 20 < whole.value.tar_bytes
    assert part.value.wire_bytes == part.value.tar_bytes  # --compress none: the archive as it is
    for h in ("gpu3", "gpu4"):
        assert images.image_id(h, v2) == images.image_id(SOURCE, v2)


def test_a_cut_connection_loads_nothing_and_a_rerun_completes(
    inv: inventory.Inventory, here: Host, images: Images
) -> None:
    ref = images.on_top(images.base(size=8 << 20), "v1", os.urandom(100_000))
    half = 400_000

    def mid(data: bytes, seen: int) -> int | None:
        return half - seen if seen <= half < seen + len(data) else None

    with _cutting_pool("gpu2", mid) as pool:
        report = _sync(inv, here, ref, ["gpu2", "gpu3"], pool=pool)
    assert report.read == "store"
    assert report.results["gpu3"].ok, report.results["gpu3"].reason
    bad = report.results["gpu2"]
    assert not bad.ok and "connection" in bad.reason
    assert images.image_id("gpu2", ref) is None
    assert images.leftovers("gpu2") == []
    again = _sync(inv, here, ref, ["gpu2", "gpu3"])
    assert again.results["gpu2"].ok and again.results["gpu2"].value.action == "send"
    assert images.image_id("gpu2", ref) == images.image_id(SOURCE, ref)


def test_a_cut_just_before_the_manifest_loads_nothing(inv: inventory.Inventory, here: Host, images: Images) -> None:
    """The manifest comes last: a stream cut before it leaves no image, not even an untagged one."""
    ref = images.on_top(images.base(), "v1", os.urandom(100_000))
    cut_at: list[int] = []

    def before_manifest(data: bytes, seen: int) -> int | None:
        i = data.find(b"manifest.json\0")
        while i >= 0 and (seen + i) % 512:
            i = data.find(b"manifest.json\0", i + 1)
        if i >= 0:
            cut_at.append(seen + i)
        return i if i >= 0 else None

    with _cutting_pool("gpu4", before_manifest) as pool:
        r = _sync(inv, here, ref, ["gpu4"], pool=pool, compress="none").results["gpu4"]
    assert cut_at, "the stream never reached the manifest"
    assert not r.ok
    assert images.image_id("gpu4", ref) is None
    assert images.leftovers("gpu4") == []
    assert _sync(inv, here, ref, ["gpu4"]).results["gpu4"].ok


def test_docker_save_is_still_there_on_request(inv: inventory.Inventory, here: Host, images: Images) -> None:
    ref = images.base()
    report = _sync(inv, here, ref, ["gpu2"], read="save")
    assert report.read == "save" and report.results["gpu2"].ok, report.results["gpu2"].reason
    assert images.image_id("gpu2", ref) == images.image_id(SOURCE, ref)


def test_the_store_of_another_machine_is_a_clear_error_or_docker_save(inv: inventory.Inventory, images: Images) -> None:
    ref = images.base()
    with pytest.raises(LayerStoreError, match="another machine"):
        _sync(inv, inv.host(SOURCE), ref, ["gpu2"], read="store")
    assert images.image_id("gpu2", ref) is None
    report = _sync(inv, inv.host(SOURCE), ref, ["gpu2"])  # auto: docker save over SSH
    assert report.read == "save" and "another machine" in report.read_note
    assert report.results["gpu2"].ok

"""`forge sync` reading layers straight from the source daemon's layer store.

The source is this machine (a local inventory host) reading gpu1's daemon through its socket,
as root, so forge can read gpu1's data root: the path `forge sync` takes as root on a build
host. Images and faults: tests/lab/imagekit.py.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.fleet import Pool
from forge.images.inspect import FORMAT, parse_image_line
from forge.images.layerstore import LayerStore, LayerStoreError, open_store, write_layer_tar
from forge.inventory import Host
from tests.lab.imagekit import SOURCE, Images, cut_at, cut_before_manifest, cutting_pool, docker, sync

pytestmark = pytest.mark.lab


@pytest.fixture()
def here(lab: Any) -> Host:
    """This machine, with gpu1's daemon as its Docker."""
    return Host(name="here", address="localhost", local=True, docker_host=lab.lab.config.docker_host(SOURCE))


def _store(here: Host) -> LayerStore:
    with Pool() as pool:
        store, why = open_store(pool.get(here))
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
        docker(lab, SOURCE, "build", "-q", "-t", ref, d)
    images.ids.add(docker(lab, SOURCE, "image", "inspect", "-f", "{{.Id}}", ref))
    image = parse_image_line(docker(lab, SOURCE, "image", "inspect", "--format", FORMAT, ref))
    assert image is not None and len(image.layers) == 2
    store = _store(here)
    for chain, diff_id in zip(image.chains, image.layers, strict=True):
        layer = store.layer(chain, diff_id)
        digest = hashlib.sha256()
        assert write_layer_tar(layer, digest.update) == layer.size
        assert "sha256:" + digest.hexdigest() == diff_id


def test_a_fresh_host_gets_the_image_read_from_the_store(inv: inventory.Inventory, here: Host, images: Images) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(1000))
    report = sync(inv, ref, ["gpu2"], source=here)
    r = report.results["gpu2"]
    assert r.ok, r.reason
    assert report.read == "store" and report.read_note == ""
    assert r.value.action == "send" and r.value.layers_sent == 2 and r.value.codec == "zstd"
    assert images.same("gpu2", ref)
    assert images.leftovers("gpu2") == []


def test_only_the_layers_a_host_lacks_are_read_and_sent(inv: inventory.Inventory, here: Host, images: Images) -> None:
    v1 = images.on_top(images.base(size=6 << 20), "v1", os.urandom(200_000))
    first = sync(inv, v1, ["gpu3"], source=here, compress="none")
    assert first.results["gpu3"].ok, first.results["gpu3"].reason
    v2 = images.on_top(v1, "v2", os.urandom(300_000))
    report = sync(inv, v2, ["gpu3", "gpu4"], source=here, compress="none")
    assert report.read == "store"
    part, whole = report.results["gpu3"], report.results["gpu4"]
    assert part.ok and whole.ok, (part.reason, whole.reason)
    assert part.value.layers_sent == 1 and whole.value.layers_sent == 3
    assert part.value.tar_bytes < 400_000 < 6 << 20 < whole.value.tar_bytes
    assert part.value.wire_bytes == part.value.tar_bytes  # --compress none: the archive as it is
    for h in ("gpu3", "gpu4"):
        assert images.same(h, v2)


def test_a_cut_connection_loads_nothing_and_a_rerun_completes(
    inv: inventory.Inventory, here: Host, images: Images
) -> None:
    ref = images.on_top(images.base(size=8 << 20), "v1", os.urandom(100_000))
    with cutting_pool(images.lab, "gpu2", cut_at(400_000)) as pool:
        report = sync(inv, ref, ["gpu2", "gpu3"], source=here, pool=pool)
    assert report.read == "store"
    assert report.results["gpu3"].ok, report.results["gpu3"].reason
    bad = report.results["gpu2"]
    assert not bad.ok and "connection" in bad.reason
    assert images.image_id("gpu2", ref) is None
    assert images.leftovers("gpu2") == []
    again = sync(inv, ref, ["gpu2", "gpu3"], source=here)
    assert again.results["gpu2"].ok and again.results["gpu2"].value.action == "send"
    assert images.same("gpu2", ref)


def test_a_cut_just_before_the_manifest_loads_nothing(inv: inventory.Inventory, here: Host, images: Images) -> None:
    """The manifest comes last: a stream cut before it leaves no image, not even an untagged one."""
    ref = images.on_top(images.base(), "v1", os.urandom(100_000))
    reached: list[int] = []

    def before_manifest(data: bytes, seen: int) -> int | None:
        at = cut_before_manifest(data, seen)
        if at is not None:
            reached.append(seen + at)
        return at

    with cutting_pool(images.lab, "gpu4", before_manifest) as pool:
        r = sync(inv, ref, ["gpu4"], source=here, pool=pool, compress="none").results["gpu4"]
    assert reached, "the stream never reached the manifest"
    assert not r.ok
    assert images.image_id("gpu4", ref) is None
    assert images.leftovers("gpu4") == []
    assert sync(inv, ref, ["gpu4"], source=here).results["gpu4"].ok


def test_docker_save_is_still_there_on_request(inv: inventory.Inventory, here: Host, images: Images) -> None:
    ref = images.base()
    report = sync(inv, ref, ["gpu2"], source=here, read="save")
    assert report.read == "save" and report.results["gpu2"].ok, report.results["gpu2"].reason
    assert images.same("gpu2", ref)


def test_the_store_of_another_machine_is_a_clear_error_or_docker_save(inv: inventory.Inventory, images: Images) -> None:
    ref = images.base()
    with pytest.raises(LayerStoreError, match="another machine"):
        sync(inv, ref, ["gpu2"], source=inv.host(SOURCE), read="store")
    assert images.image_id("gpu2", ref) is None
    report = sync(inv, ref, ["gpu2"], source=inv.host(SOURCE))  # auto: docker save over SSH
    assert report.read == "save" and "another machine" in report.read_note
    assert report.results["gpu2"].ok

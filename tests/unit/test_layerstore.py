"""Reading layers from a daemon's layer store: tar-split reassembly, the load archive, the checks.

The stores here are built on disk the way the daemon lays them out (layerdb, imagedb,
overlay2/<cache-id>/diff) from tars made with :mod:`tarfile`, with tar-split metadata written
as the daemon's tar-split library writes it (raw header bytes as segments, files by name and
size). The lab tests check the same code against the real daemon's store.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from forge.images import oci
from forge.images.inspect import ImageInfo
from forge.images.layers import chain_ids
from forge.images.layerstore import (
    LayerStore,
    LayerStoreError,
    open_store,
    plan_archive,
    read_tar_split,
    write_layer_tar,
)
from forge.inventory import Host
from forge.session import HostSession
from tests.unit.fakes import FakeTransport, session


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 1_700_000_000
    return info, data


def _entry(name: str, kind: bytes, **kw: object) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in kw.items():
        setattr(info, k, v)
    return info, None


def _layer_tar() -> bytes:
    """A layer with what real layers have: dirs, files, empty files, links, long and odd names."""
    long_dir = "usr/" + "/".join(["a-rather-long-directory-name"] * 5)
    return _tar(
        [
            _entry("usr/", tarfile.DIRTYPE, mode=0o755),
            _file("usr/lib.so", os.urandom(70_000)),
            _file("usr/empty", b""),
            _entry("usr/link", tarfile.SYMTYPE, linkname="lib.so"),
            _entry("usr/hard", tarfile.LNKTYPE, linkname="usr/lib.so"),
            _entry(long_dir + "/", tarfile.DIRTYPE, mode=0o755),
            _file(long_dir + "/file-with-a-long-name.txt", b"deep\n" * 300),
            _file("usr/ünïcode-名前.txt", b"utf-8 name\n"),
            _file("usr/.wh.removed", b""),
            _file("usr/exact-block", b"x" * 512),
        ]
    )


def _tar_split(tar: bytes) -> tuple[bytes, dict[str, bytes]]:
    """tar-split records for ``tar`` (gzipped JSON lines) and the files' contents by name."""
    lines: list[dict[str, object]] = []
    files: dict[str, bytes] = {}
    pos = 0
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
        for m in t.getmembers():
            lines.append({"type": 2, "payload": base64.b64encode(tar[pos : m.offset_data]).decode()})
            rec: dict[str, object] = {"type": 1, "name": m.name, "payload": None}
            if m.isreg() and m.size:
                rec["size"] = m.size
                files[m.name] = tar[m.offset_data : m.offset_data + m.size]
            elif m.isreg():
                files[m.name] = b""
            lines.append(rec)
            pos = m.offset_data + (m.size if m.isreg() else 0)
    lines.append({"type": 2, "payload": base64.b64encode(tar[pos:]).decode()})
    for i, rec in enumerate(lines):
        rec["position"] = i
    return gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in lines)), files


class FakeDaemon:
    """A data root laid out like an overlay2 daemon's, holding one image."""

    def __init__(self, root: Path, layer_tars: list[bytes]) -> None:
        self.root = root
        self.layer_tars = layer_tars
        diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layer_tars]
        chains = chain_ids(diff_ids)
        for i, (tar, diff_id, chain) in enumerate(zip(layer_tars, diff_ids, chains, strict=True)):
            d = root / "image/overlay2/layerdb/sha256" / chain.removeprefix("sha256:")
            d.mkdir(parents=True)
            split, files = _tar_split(tar)
            (d / "tar-split.json.gz").write_bytes(split)
            (d / "diff").write_text(diff_id)
            (d / "cache-id").write_text(f"cache{i}")
            diff = root / "overlay2" / f"cache{i}" / "diff"
            diff.mkdir(parents=True)
            for name, data in files.items():
                (diff / name).parent.mkdir(parents=True, exist_ok=True)
                (diff / name).write_bytes(data)
        config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}, "os": "linux"}).encode()
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        content = root / "image/overlay2/imagedb/content/sha256"
        content.mkdir(parents=True)
        (content / image_id.removeprefix("sha256:")).write_bytes(config)
        self.config = config
        self.image = ImageInfo(image_id, sum(map(len, layer_tars)), (), tuple(diff_ids))
        self.store = LayerStore(root)

    def diff_dir(self, i: int) -> Path:
        return self.root / "overlay2" / f"cache{i}" / "diff"


@pytest.fixture()
def daemon(tmp_path: Path) -> FakeDaemon:
    top = _tar([_file("app/BUILD", b"nightly-2\n"), _file("app/code.py", os.urandom(3000))])
    return FakeDaemon(tmp_path / "docker", [_layer_tar(), top])


def _bytes(write: object) -> bytes:
    buf = io.BytesIO()
    write(buf.write)  # type: ignore[operator]
    return buf.getvalue()


def test_a_layer_tar_is_reassembled_byte_for_byte(daemon: FakeDaemon) -> None:
    archive = plan_archive(daemon.store, daemon.image, frozenset())
    for layer, original in zip(archive.layers, daemon.layer_tars, strict=True):
        assert layer.size == len(original)
        assert _bytes(lambda out, layer=layer: write_layer_tar(layer, out)) == original


def test_tar_split_names_may_be_raw_bytes(tmp_path: Path) -> None:
    raw = b"caf\xe9.txt"  # not UTF-8: the daemon writes name_raw
    split = tmp_path / "ts.json.gz"
    split.write_bytes(
        gzip.compress(json.dumps({"type": 1, "name_raw": base64.b64encode(raw).decode(), "size": 3}).encode())
    )
    (entry,) = read_tar_split(split)
    assert entry.name == raw and entry.size == 3


def test_the_archive_loads_config_then_layers_then_the_manifest(daemon: FakeDaemon) -> None:
    archive = plan_archive(daemon.store, daemon.image, frozenset())
    data = _bytes(archive.write)
    assert len(data) == archive.size
    image = daemon.image
    manifest = archive.manifest
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        assert t.getnames() == [
            oci.blob_path(image.id),
            oci.blob_path(image.layers[0]),
            oci.blob_path(image.layers[1]),
            oci.blob_path(manifest.digest),
            "oci-layout",
            "index.json",
            "manifest.json",
        ]
        assert _read(t, oci.blob_path(image.id)) == daemon.config
        assert _read(t, oci.blob_path(image.layers[1])) == daemon.layer_tars[1]
        assert _read(t, oci.blob_path(manifest.digest)) == manifest.data
        docker = json.loads(_read(t, "manifest.json"))
    assert docker == [
        {"Config": oci.blob_path(image.id), "RepoTags": [], "Layers": [oci.blob_path(d) for d in image.layers]}
    ]
    # the canonical manifest of the uncompressed layers, with their tar sizes
    assert manifest.config.digest == image.id and manifest.config.size == len(daemon.config)
    assert [(b.digest, b.size) for b in manifest.layers] == [
        (d, len(tar)) for d, tar in zip(image.layers, daemon.layer_tars, strict=True)
    ]


def _read(t: tarfile.TarFile, name: str) -> bytes:
    f = t.extractfile(name)
    assert f is not None
    return f.read()


def test_small_pieces_reach_the_stream_gathered_not_one_by_one(daemon: FakeDaemon) -> None:
    archive = plan_archive(daemon.store, daemon.image, frozenset())
    chunks: list[bytes] = []
    archive.write(chunks.append)
    assert archive.size < 1 << 20 and len(chunks) == 1  # headers, small files, padding: one chunk
    big = os.urandom(3 << 20)
    fat = FakeDaemon(daemon.root.parent / "fat", [_tar([_file("big.bin", big), _file("small", b"x")])])
    chunks.clear()
    plan_archive(fat.store, fat.image, frozenset()).write(chunks.append)
    assert b"".join(chunks).count(big) == 1
    # a short chunk only where a big file's chunk follows (what was gathered goes first) or at the end
    assert all(len(c) >= 1 << 20 or len(nxt) >= 1 << 20 for c, nxt in zip(chunks, chunks[1:], strict=False))


def test_layers_the_host_has_are_left_out_but_still_listed(daemon: FakeDaemon) -> None:
    base_chain = daemon.image.chains[0]
    archive = plan_archive(daemon.store, daemon.image, frozenset({base_chain}))
    assert [layer.chain_id for layer in archive.send] == [daemon.image.chains[1]]
    assert archive.manifest == plan_archive(daemon.store, daemon.image, frozenset()).manifest
    data = _bytes(archive.write)
    assert len(data) == archive.size < len(daemon.layer_tars[0])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        assert oci.blob_path(daemon.image.layers[0]) not in t.getnames()
        manifest = json.loads(_read(t, "manifest.json"))
    assert len(manifest[0]["Layers"]) == 2


def test_a_file_of_the_wrong_size_is_found_before_streaming(daemon: FakeDaemon) -> None:
    (daemon.diff_dir(0) / "usr/lib.so").write_bytes(b"short")
    with pytest.raises(LayerStoreError, match="usr/lib.so"):
        plan_archive(daemon.store, daemon.image, frozenset())


def test_a_missing_file_is_found_before_streaming(daemon: FakeDaemon) -> None:
    (daemon.diff_dir(1) / "app/code.py").unlink()
    with pytest.raises(LayerStoreError, match="app/code.py"):
        plan_archive(daemon.store, daemon.image, frozenset())


def test_a_symlink_never_leads_out_of_the_layer(daemon: FakeDaemon, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "code.py").write_bytes(os.urandom(3000))
    app = daemon.diff_dir(1) / "app"
    for p in app.iterdir():
        p.unlink()
    app.rmdir()
    app.symlink_to(outside)  # the layer's "app/code.py" would now resolve outside it
    with pytest.raises(LayerStoreError, match="outside"):
        plan_archive(daemon.store, daemon.image, frozenset())


def test_a_file_that_is_a_symlink_is_not_read(daemon: FakeDaemon, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"nightly-2\n")
    build = daemon.diff_dir(1) / "app/BUILD"
    build.unlink()
    build.symlink_to(target)
    with pytest.raises(LayerStoreError, match="app/BUILD"):
        plan_archive(daemon.store, daemon.image, frozenset())


def test_a_config_that_does_not_hash_to_the_image_id_is_refused(daemon: FakeDaemon) -> None:
    path = daemon.root / "image/overlay2/imagedb/content/sha256" / daemon.image.id.removeprefix("sha256:")
    path.write_bytes(daemon.config + b" ")
    with pytest.raises(LayerStoreError, match="image ID"):
        plan_archive(daemon.store, daemon.image, frozenset())


def test_a_layer_recorded_with_another_diff_id_is_refused(daemon: FakeDaemon) -> None:
    d = daemon.root / "image/overlay2/layerdb/sha256" / daemon.image.chains[1].removeprefix("sha256:")
    (d / "diff").write_text("sha256:" + "0" * 64)
    with pytest.raises(LayerStoreError, match="records diff ID"):
        plan_archive(daemon.store, daemon.image, frozenset())


def test_a_layer_the_store_does_not_have_is_refused(daemon: FakeDaemon) -> None:
    other = ImageInfo(daemon.image.id, 1, (), (daemon.image.layers[0], "sha256:" + "1" * 64))
    with pytest.raises(LayerStoreError, match="not in"):
        plan_archive(daemon.store, other, frozenset())


# --------------------------------------------------------------------------- open_store


def info(stdout: str, host: Host | None = None) -> tuple[HostSession, FakeTransport]:
    """A host whose `docker info` prints ``stdout``."""
    fake = FakeTransport().on(" info ", stdout=stdout)
    return session(host or LOCAL, fake), fake


LOCAL = Host(name="here", address="localhost", local=True)


def test_the_store_of_a_readable_local_overlay2_daemon_is_used(daemon: FakeDaemon) -> None:
    s, fake = info(f'["{daemon.root}","overlay2"]\n')
    store, why = open_store(s)
    assert store == LayerStore(daemon.root) and why == ""
    assert fake.scripts == ["docker info --format '[{{json .DockerRootDir}},{{json .Driver}}]'"]


@pytest.mark.parametrize(
    ("host", "answer", "reason"),
    [
        (Host(name="gpu1", address="10.0.0.1"), None, "another machine"),
        (Host(name="h", address="localhost", local=True, docker_host="tcp://10.0.0.2:2375"), None, "over tcp"),
        (Host(name="h", address="localhost", local=True, docker_host="ssh://gpu2"), None, "over ssh"),
        (LOCAL, '["{root}","btrfs"]', "'btrfs', not overlay2"),
        (LOCAL, '["/nonexistent/docker","overlay2"]', "no classic layer store"),
        (LOCAL, "", "did not say"),
        (LOCAL, "garbage {", "did not say"),
        (LOCAL, '["only-one"]', "did not say"),
    ],
)
def test_the_store_is_not_used_where_it_cannot_be_read(
    daemon: FakeDaemon, host: Host, answer: str | None, reason: str
) -> None:
    s, fake = info((answer or "").replace("{root}", str(daemon.root)), host)
    store, why = open_store(s)
    assert store is None and reason in why
    if answer is None:
        assert fake.scripts == []  # decided without asking the daemon

"""forge's load archive format (forge.images.oci), against what Docker Engine 26 writes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from forge.images import oci

FIX = Path(__file__).parent.parent / "fixtures" / "docker-save" / "engine26"
ENGINE26_ID = "sha256:02d1c7374d601c3a127bab9c200a3b572e869d969db1edbc3e701fd8f7a4e8c8"


def test_the_canonical_manifest_is_byte_for_byte_engine_26s() -> None:
    theirs = (FIX / "app1-manifest.json").read_bytes()
    parsed = oci.parse_manifest(theirs)
    assert parsed.digest == ENGINE26_ID
    ours = oci.canonical(parsed.config, parsed.layers)
    assert ours.data == theirs and ours.digest == ENGINE26_ID


def test_docker_v2_manifests_parse_and_indexes_are_told_apart() -> None:
    v2 = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": "sha256:" + "a" * 64,
                "size": 9,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": "sha256:" + "b" * 64,
                    "size": 3,
                }
            ],
        }
    ).encode()
    m = oci.parse_manifest(v2)
    assert m.config.digest == "sha256:" + "a" * 64 and m.layers[0].media_type.endswith("tar.gzip")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.INDEX,
            "manifests": [
                {
                    "mediaType": oci.MANIFEST,
                    "digest": "sha256:" + "c" * 64,
                    "size": 5,
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "mediaType": oci.MANIFEST,
                    "digest": "sha256:" + "d" * 64,
                    "size": 5,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
    ).encode()
    assert oci.is_index(index) and not oci.is_index(v2)
    assert [(b.digest[-1], p["architecture"]) for b, p in oci.parse_index(index)] == [("c", "arm64"), ("d", "amd64")]
    with pytest.raises(oci.ManifestError, match="index"):
        oci.parse_manifest(index)
    for bad in (b"not json", b"{}", json.dumps({"config": {"digest": "md5:x", "size": 1}, "layers": []}).encode()):
        with pytest.raises(oci.ManifestError):
            oci.parse_manifest(bad)


def test_the_tail_holds_both_indexes_and_names_no_image() -> None:
    m = oci.parse_manifest((FIX / "app1-manifest.json").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(oci.tail(m))) as t:
        names = t.getnames()
        index = json.loads(t.extractfile("index.json").read())  # type: ignore[union-attr]
        docker = json.loads(t.extractfile("manifest.json").read())  # type: ignore[union-attr]
        layout = t.extractfile("oci-layout").read()  # type: ignore[union-attr]
    assert names == [oci.blob_path(m.digest), "oci-layout", "index.json", "manifest.json"]
    assert layout == oci.OCI_LAYOUT
    assert index["manifests"] == [{"mediaType": oci.MANIFEST, "digest": m.digest, "size": len(m.data)}]
    assert docker == [{"Config": m.config.path, "RepoTags": [], "Layers": [b.path for b in m.layers]}]
    assert len(oci.tail(m)) % 512 == 0

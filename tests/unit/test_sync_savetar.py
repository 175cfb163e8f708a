"""The docker-save filter, on real `docker save` archives captured from Engine 20.10
(tests/fixtures/docker-save: fixture2 = fixture1 + one layer)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from forge.images import oci
from forge.images.layers import chain_ids, go_json, identify_v1_dir
from forge.images.savetar import ArchiveError, SaveTranscoder

FIX = Path(__file__).parent.parent / "fixtures" / "docker-save"


def _load(n: int) -> tuple[bytes, list[str]]:
    return (FIX / f"fixture{n}.tar").read_bytes(), json.loads((FIX / f"fixture{n}.layers.json").read_text())


def _config(n: int) -> str:
    return (FIX / f"fixture{n}.id").read_text().strip()


def _run(
    data: bytes,
    diff_ids: list[str],
    skip: set[str],
    chunk: int,
    *,
    config: str,
    source_manifest: oci.Manifest | None = None,
) -> tuple[bytes, SaveTranscoder]:
    out = bytearray()
    f = SaveTranscoder(diff_ids, skip, out.extend, config=config, source_manifest=source_manifest)
    for i in range(0, len(data), chunk):
        f.write(data[i : i + chunk])
    f.finish()
    return bytes(out), f


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _check_load_archive(archive: bytes, diff_ids: list[str], config: str, *, sent: list[int]) -> oci.Manifest:
    """What every engine's docker load needs (oci.py): the blobs, then both indexes."""
    members = _members(archive)
    names = list(members)
    manifest = oci.parse_manifest(members[oci.blob_path(json.loads(members["index.json"])["manifests"][0]["digest"])])
    assert names[-4:] == [oci.blob_path(manifest.digest), "oci-layout", "index.json", "manifest.json"]
    assert oci.digest_of(members[oci.blob_path(config)]) == config
    assert manifest.config.digest == config and [b.digest for b in manifest.layers] == diff_ids
    assert json.loads(members["manifest.json"]) == [
        {"Config": oci.blob_path(config), "RepoTags": [], "Layers": [oci.blob_path(d) for d in diff_ids]}
    ]
    assert "annotations" not in members["index.json"].decode()  # loads untagged
    for i, d in enumerate(diff_ids):
        if i in sent:
            assert oci.digest_of(members[oci.blob_path(d)]) == d
            assert manifest.layers[i].size == len(members[oci.blob_path(d)])
        else:
            assert oci.blob_path(d) not in members
    return manifest


@pytest.mark.parametrize("chunk", [1, 7, 511, 512, 513, 4096, 1 << 20])
@pytest.mark.parametrize("n", [1, 2])
def test_an_engine_20_save_becomes_forges_load_archive(n: int, chunk: int) -> None:
    data, diff_ids = _load(n)
    out, f = _run(data, diff_ids, set(), chunk, config=_config(n))
    manifest = _check_load_archive(out, diff_ids, _config(n), sent=list(range(len(diff_ids))))
    assert f.manifest == manifest and sorted(f.stats.layers_sent) == list(range(len(diff_ids)))
    assert out == _run(data, diff_ids, set(), 1 << 20, config=_config(n))[0]  # whatever the chunks


def test_chain_ids_of_the_fixture_match_docker() -> None:
    _, diff_ids = _load(2)
    chains = chain_ids(diff_ids)
    assert chains[0] == diff_ids[0]
    assert len(set(chains)) == len(chains)
    assert all(c.startswith("sha256:") and len(c) == 71 for c in chains)


@pytest.mark.parametrize("chunk", [100, 65536])
def test_layers_the_host_has_are_left_out_and_still_listed(chunk: int) -> None:
    data, diff_ids = _load(2)
    _, base = _load(1)
    have = set(chain_ids(base))  # the host has fixture:1, i.e. the bottom three layers
    out, f = _run(data, diff_ids, have, chunk, config=_config(2))
    assert sorted(f.stats.layers_skipped) == [0, 1, 2]
    assert f.stats.layers_sent == [3]
    full, _ = _run(data, diff_ids, set(), chunk, config=_config(2))
    # the manifest (sizes of every layer, seen in the skipped members' headers) is the same
    assert _check_load_archive(out, diff_ids, _config(2), sent=[3]) == _check_load_archive(
        full, diff_ids, _config(2), sent=[0, 1, 2, 3]
    )
    assert len(out) < len(full)
    assert f.stats.bytes_out == len(out) and f.stats.bytes_in == len(data)


def test_a_diff_id_on_another_parent_is_not_the_same_layer() -> None:
    data, diff_ids = _load(2)
    # The host has a layer with the top layer's diff ID, but on another base: not the same layer.
    out, f = _run(data, diff_ids, {diff_ids[3], diff_ids[1]}, 4096, config=_config(2))
    assert f.stats.layers_skipped == []
    _check_load_archive(out, diff_ids, _config(2), sent=[0, 1, 2, 3])


def test_a_cut_stream_is_reported() -> None:
    data, diff_ids = _load(1)
    f = SaveTranscoder(diff_ids, set(), lambda b: None, config=_config(1))
    f.write(data[: len(data) // 2])
    with pytest.raises(ArchiveError):
        f.finish()


def _retar(data: bytes, rename: dict[str, str] | None = None, json_override: dict[str, bytes] | None = None) -> bytes:
    """Rewrite an archive in PAX format, renaming directories / replacing json members."""
    rename = rename or {}
    json_override = json_override or {}
    src = tarfile.open(fileobj=io.BytesIO(data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            top, _, rest = m.name.partition("/")
            content = src.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if m.name in json_override:
                content = json_override[m.name]
            m.name = rename.get(top, top) + ("/" + rest if rest else "")
            if content is not None:
                m.size = len(content)
                dst.addfile(m, io.BytesIO(content))
            else:
                dst.addfile(m)
    return buf.getvalue()


def test_long_names_in_pax_headers_are_followed() -> None:
    data, diff_ids = _load(2)
    _, base = _load(1)
    dirs = {n.split("/")[0] for n in tarfile.open(fileobj=io.BytesIO(data)).getnames() if n.endswith("/layer.tar")}
    renamed = _retar(data, rename={d: d + "-" + "x" * 120 for d in dirs})
    out, f = _run(renamed, diff_ids, set(chain_ids(base)), 999, config=_config(2))
    assert sorted(f.stats.layers_skipped) == [0, 1, 2]
    _check_load_archive(out, diff_ids, _config(2), sent=[3])


def test_a_layer_directory_that_matches_no_layer_stops_the_stream() -> None:
    data, diff_ids = _load(2)
    jsons = [n for n in tarfile.open(fileobj=io.BytesIO(data)).getnames() if n.endswith("/json")]
    bogus = {n: b'{"id":"0000","created":"1970-01-01T00:00:00Z"}' for n in jsons}
    with pytest.raises(ArchiveError, match="cannot identify"):
        _run(_retar(data, json_override=bogus), diff_ids, set(), 4096, config=_config(2))


def _oci_save(
    legacy: bytes, diff_ids: list[str], config: str, *, gzip_layers: bool = False
) -> tuple[bytes, oci.Manifest]:
    """What Engine 26's docker save writes for the same image: blobs sorted by digest (v1
    metadata among them), then index.json, manifest.json, oci-layout, repositories. With
    gzip_layers, as the containerd store keeps a pulled image: compressed blobs."""
    import gzip

    members = _members(legacy)
    layer_tars = [members[n] for n in json.loads(members["manifest.json"])[0]["Layers"]]
    blobs: dict[str, bytes] = {config: members[config.removeprefix("sha256:") + ".json"]}
    layers = []
    for data in layer_tars:
        blob = gzip.compress(data, mtime=0) if gzip_layers else data
        media = oci.LAYER + "+gzip" if gzip_layers else oci.LAYER
        blobs[oci.digest_of(blob)] = blob
        layers.append(oci.Blob(oci.digest_of(blob), len(blob), media))
    junk = b'{"id":"v1 metadata"}'
    blobs[oci.digest_of(junk)] = junk
    manifest = oci.canonical(oci.Blob(config, len(blobs[config])), layers)
    blobs[manifest.digest] = manifest.data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for digest in sorted(blobs):
            info = tarfile.TarInfo(oci.blob_path(digest))
            info.size = len(blobs[digest])
            t.addfile(info, io.BytesIO(blobs[digest]))
        for name, data in (
            ("index.json", oci.index_json(manifest)),
            ("manifest.json", b"[]"),
            ("oci-layout", oci.OCI_LAYOUT),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue(), manifest


def test_an_engine_26_classic_save_gives_the_same_archive_as_engine_20() -> None:
    data, diff_ids = _load(2)
    _, base = _load(1)
    newer, theirs = _oci_save(data, diff_ids, _config(2))
    for skip in (set(), set(chain_ids(base))):
        ours, f = _run(newer, diff_ids, skip, 777, config=_config(2))
        # the same members (blobs in the source's order: sorted by digest there)
        assert _members(ours) == _members(_run(data, diff_ids, skip, 777, config=_config(2))[0])
    # and the manifest forge writes is the one Engine 26 writes
    assert f.manifest is not None and f.manifest.data == theirs.data


def test_a_containerd_source_passes_its_own_manifest_and_compressed_blobs() -> None:
    data, diff_ids = _load(2)
    _, base = _load(1)
    pulled, manifest = _oci_save(data, diff_ids, _config(2), gzip_layers=True)
    out, f = _run(pulled, diff_ids, set(chain_ids(base)), 4096, config=_config(2), source_manifest=manifest)
    members = _members(out)
    assert f.manifest == manifest and sorted(f.stats.layers_skipped) == [0, 1, 2]
    assert [b.path in members for b in manifest.layers] == [False, False, False, True]
    assert members[oci.blob_path(manifest.digest)] == manifest.data
    assert json.loads(members["manifest.json"])[0]["Layers"] == [b.path for b in manifest.layers]
    with pytest.raises(ArchiveError, match="does not list"):
        SaveTranscoder(diff_ids[:2], set(), lambda b: None, config=_config(2), source_manifest=manifest)


def test_identify_v1_dir_rejects_garbage() -> None:
    chains = chain_ids(_load(1)[1])
    assert identify_v1_dir(b"not json", chains) is None
    assert identify_v1_dir(b"[]", chains) is None
    assert identify_v1_dir(b'{"id": 1}', chains) is None


def test_go_json_escapes_like_go() -> None:
    assert go_json({"a": "<&>é", "b": None, "c": [1, False]}) == '{"a":"\\u003c\\u0026\\u003eé","b":null,"c":[1,false]}'

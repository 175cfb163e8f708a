"""The docker-save filter, on real `docker save` archives captured from Engine 20.10
(tests/fixtures/docker-save: fixture2 = fixture1 + one layer)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from forge.images.layers import chain_ids, go_json, identify_v1_dir
from forge.images.savetar import ArchiveError, LayerFilter

FIX = Path(__file__).parent.parent / "fixtures" / "docker-save"


def _load(n: int) -> tuple[bytes, list[str]]:
    return (FIX / f"fixture{n}.tar").read_bytes(), json.loads((FIX / f"fixture{n}.layers.json").read_text())


def _run(data: bytes, diff_ids: list[str], skip: set[str], chunk: int) -> tuple[bytes, LayerFilter]:
    out = bytearray()
    f = LayerFilter(diff_ids, skip, out.extend)
    for i in range(0, len(data), chunk):
        f.write(data[i : i + chunk])
    f.finish()
    return bytes(out), f


@pytest.mark.parametrize("chunk", [1, 7, 511, 512, 513, 4096, 1 << 20])
@pytest.mark.parametrize("n", [1, 2])
def test_nothing_to_skip_passes_the_archive_unchanged(n: int, chunk: int) -> None:
    data, diff_ids = _load(n)
    out, f = _run(data, diff_ids, set(), chunk)
    assert out == data
    assert f.stats.unidentified == 0
    assert sorted(f.stats.layers_sent) == list(range(len(diff_ids)))


def test_chain_ids_of_the_fixture_match_docker() -> None:
    _, diff_ids = _load(2)
    chains = chain_ids(diff_ids)
    assert chains[0] == diff_ids[0]
    assert len(set(chains)) == len(chains)
    assert all(c.startswith("sha256:") and len(c) == 71 for c in chains)


@pytest.mark.parametrize("chunk", [100, 65536])
def test_layers_the_host_has_are_dropped_and_the_rest_is_a_valid_archive(chunk: int) -> None:
    data, diff_ids = _load(2)
    _, base = _load(1)
    have = set(chain_ids(base))  # the host has fixture:1, i.e. the bottom three layers
    out, f = _run(data, diff_ids, have, chunk)
    assert sorted(f.stats.layers_skipped) == [0, 1, 2]
    assert f.stats.layers_sent == [3]
    with tarfile.open(fileobj=io.BytesIO(out)) as t:
        names = t.getnames()
        manifest = json.loads(t.extractfile("manifest.json").read())  # type: ignore[union-attr]
    layer_paths = manifest[0]["Layers"]
    assert [p in names for p in layer_paths] == [False, False, False, True]
    assert len(out) < len(data)
    assert f.stats.bytes_out == len(out) and f.stats.bytes_in == len(data)


def test_a_diff_id_on_another_parent_is_not_the_same_layer() -> None:
    data, diff_ids = _load(2)
    # The host has a layer with the top layer's diff ID, but on another base: not the same layer.
    out, f = _run(data, diff_ids, {diff_ids[3], diff_ids[1]}, 4096)
    assert out == data
    assert f.stats.layers_skipped == []


def test_a_cut_stream_is_reported() -> None:
    data, diff_ids = _load(1)
    f = LayerFilter(diff_ids, set(), lambda b: None)
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
    out, f = _run(renamed, diff_ids, set(chain_ids(base)), 999)
    assert sorted(f.stats.layers_skipped) == [0, 1, 2]
    with tarfile.open(fileobj=io.BytesIO(out)) as t:
        kept = [n for n in t.getnames() if n.endswith("/layer.tar")]
    assert len(kept) == 1 and len(kept[0]) > 100


def test_an_unrecognised_layer_is_sent_never_dropped() -> None:
    data, diff_ids = _load(2)
    _, base = _load(1)
    jsons = [n for n in tarfile.open(fileobj=io.BytesIO(data)).getnames() if n.endswith("/json")]
    bogus = {n: b'{"id":"0000","created":"1970-01-01T00:00:00Z"}' for n in jsons}
    changed = _retar(data, json_override=bogus)
    out, f = _run(changed, diff_ids, set(chain_ids(base)), 4096)
    assert f.stats.layers_skipped == []
    assert f.stats.unidentified == 4
    assert out == changed


def test_identify_v1_dir_rejects_garbage() -> None:
    chains = chain_ids(_load(1)[1])
    assert identify_v1_dir(b"not json", chains) is None
    assert identify_v1_dir(b"[]", chains) is None
    assert identify_v1_dir(b'{"id": 1}', chains) is None


def test_go_json_escapes_like_go() -> None:
    assert go_json({"a": "<&>é", "b": None, "c": [1, False]}) == '{"a":"\\u003c\\u0026\\u003eé","b":null,"c":[1,false]}'

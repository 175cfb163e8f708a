"""Parsing a host's image survey (captured from a lab host) and planning what to send."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from forge.errors import ForgeError, LockHeld
from forge.images import codec as codecs
from forge.images.inspect import ImageInfo, is_image_id, normalize_ref, parse_image_line, parse_survey
from forge.images.layers import chain_ids
from forge.images.plan import plan_host, wanted_tags
from forge.inventory import Host
from forge.lock import FileLock

FIX = Path(__file__).parent.parent / "fixtures" / "docker-save"
HOST = Host(name="h", address="10.0.0.1")
ALL = frozenset({"zstd", "bzip2", "gzip"})


def _survey():  # type: ignore[no-untyped-def]
    return parse_survey((FIX / "survey-gpu1.txt").read_text())


def test_the_survey_lists_images_tools_and_layer_chains() -> None:
    have = _survey()
    assert have.tools == ALL
    fixture2 = have.tagged("forge-test/fixture:2")
    assert fixture2 is not None and fixture2.id == (FIX / "fixture2.id").read_text().strip()
    assert len(fixture2.layers) == 4
    assert set(fixture2.chains) <= have.chain_ids
    untagged = [i for i in have.images if not i.repo_tags]
    assert untagged and all(i.size_bytes > 0 for i in untagged)


def test_broken_lines_are_ignored() -> None:
    assert parse_image_line("image sha256:ab 12 [] ") is None
    assert parse_image_line("image sha256:ab x [] []") is None
    assert parse_image_line("garbage") is None
    info = parse_image_line('image sha256:ab 12 null ["sha256:l1"]')
    assert info == ImageInfo("sha256:ab", 12, (), ("sha256:l1",))


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("ubuntu", "ubuntu:latest"),
        ("reg:5000/a/b", "reg:5000/a/b:latest"),
        ("a/b:1", "a/b:1"),
        ("a@sha256:x", "a@sha256:x"),
        # Docker Hub names as `docker image inspect` lists them (checked on Engine 20.10)
        ("docker.io/library/forgetest:1", "forgetest:1"),
        ("library/forgetest:2", "forgetest:2"),
        ("index.docker.io/someone/forgetest:3", "someone/forgetest:3"),
        ("docker.io/ubuntu", "ubuntu:latest"),
        ("registry.lab/library/x:1", "registry.lab/library/x:1"),
    ],
)
def test_normalize_ref(ref: str, want: str) -> None:
    assert normalize_ref(ref) == want


def test_image_ids_are_told_from_names() -> None:
    assert is_image_id("sha256:" + "a" * 64) and is_image_id("0123456789ab")
    assert not is_image_id("ubuntu") and not is_image_id("a/b:1")


def _img(layers: list[str], image_id: str = "sha256:new", tags: tuple[str, ...] = ()) -> ImageInfo:
    return ImageInfo(image_id, 100, tags, tuple(layers))


def test_plan_current_tag_and_send() -> None:
    have = _survey()
    fixture2 = have.tagged("forge-test/fixture:2")
    assert fixture2 is not None
    assert plan_host(HOST, have, fixture2, ["forge-test/fixture:2"], "auto").action == "current"
    assert plan_host(HOST, have, fixture2, ["other:tag"], "auto").action == "tag"
    # A new top layer on fixture2: send, skipping every layer of fixture2.
    newer = _img([*fixture2.layers, "sha256:" + "f" * 64])
    p = plan_host(HOST, have, newer, ["forge-test/fixture:2"], "auto")
    assert p.action == "send" and p.skip == frozenset(fixture2.chains)
    assert p.stale_id == fixture2.id and p.codec.name == "zstd"


def test_plan_skips_by_chain_not_by_diff_id() -> None:
    have = _survey()
    fixture2 = have.tagged("forge-test/fixture:2")
    assert fixture2 is not None
    # The same diff IDs in another order are other layers: nothing can be skipped past the base.
    shuffled = _img([fixture2.layers[0], fixture2.layers[2], fixture2.layers[1]])
    p = plan_host(HOST, have, shuffled, ["x:1"], "none")
    assert p.skip == frozenset({fixture2.layers[0]}) == frozenset(chain_ids(shuffled.layers)[:1])


def test_codec_choice() -> None:
    assert codecs.choose("auto", ALL, ALL).name == "zstd"
    assert codecs.choose("auto", frozenset({"gzip"}), ALL).name == "none"
    assert codecs.choose("bzip2", ALL, ALL).decompress == ("bzip2", "-d", "-c")
    with pytest.raises(codecs.CodecError, match="not installed on the target"):
        codecs.choose("zstd", frozenset(), ALL)
    with pytest.raises(codecs.CodecError, match="this machine"):
        codecs.choose("zstd", ALL, frozenset())


def test_wanted_tags() -> None:
    img = _img(["sha256:l"], "sha256:" + "f" * 64, tags=("a:1", "b:2"))
    assert wanted_tags("a", img) == ("a:latest",)
    assert wanted_tags("sha256:" + "f" * 64, img) == ("a:1", "b:2")


def test_a_second_lock_holder_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    first = FileLock("sync", tmp_path).acquire()
    try:
        with pytest.raises(LockHeld, match=r"holds the lock .*\(pid \d+"):
            FileLock("sync", tmp_path).acquire()
    finally:
        first.release()
    FileLock("sync", tmp_path).acquire().release()


def test_a_waiting_lock_gets_it_when_released(tmp_path: Path) -> None:
    first = FileLock("sync", tmp_path).acquire()
    threading.Timer(0.3, first.release).start()
    started = time.monotonic()
    second = FileLock("sync", tmp_path).acquire(wait_s=10, poll_s=0.05)
    second.release()
    assert not first._fd and time.monotonic() - started < 10


def test_any_id_prefix_docker_accepts_is_an_id_not_a_name() -> None:
    # `forge sync b22a3ab2` (8 hex digits: docker resolves any unique prefix of the ID) used to
    # tag the image `b22a3ab2:latest` on every target.
    img = ImageInfo("sha256:b22a3ab250bb" + "0" * 52, 100, ("a:1", "b:2"), ("sha256:l",))
    for ref in ("b22a3ab2", "sha256:b22a3ab2", "b22a3ab250bb", img.id, img.id.removeprefix("sha256:")):
        assert wanted_tags(ref, img) == ("a:1", "b:2"), ref
    # A name docker resolved as a name stays a name, even when it looks like hex.
    named = ImageInfo("sha256:b22a3ab250bb" + "0" * 52, 100, ("b22a3ab2:latest",), ("sha256:l",))
    assert wanted_tags("b22a3ab2", named) == ("b22a3ab2:latest",)
    assert wanted_tags("cafe", img) == ("cafe:latest",)  # not this image's ID: a name


def test_an_unusable_lock_directory_is_a_forge_error_naming_it(tmp_path: Path) -> None:
    # It used to surface as "internal error: NotADirectoryError" (exit 1, no hint).
    (tmp_path / "file").write_text("")
    with pytest.raises(ForgeError, match=r"cannot use the lock file .*file/sub/sync\.lock.*FORGE_LOCK_DIR"):
        FileLock("sync", tmp_path / "file" / "sub").acquire()


def test_the_lock_file_is_never_opened_through_a_symlink(tmp_path: Path) -> None:
    """Issue 11 #6: the lock followed a symlink and truncated its target with the holder's pid."""
    precious = tmp_path / "precious"
    precious.write_text("my notes\n")
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "sync.lock").symlink_to(precious)
    with pytest.raises(ForgeError, match="it is a symlink"):
        FileLock("sync", locks).acquire()
    assert precious.read_text() == "my notes\n"
    (locks / "sync.lock").unlink()
    (locks / "sync.lock").mkdir()
    with pytest.raises(ForgeError, match="cannot use the lock file"):
        FileLock("sync", locks).acquire()


def test_the_lock_hint_does_not_suggest_wait_to_a_run_that_waited(tmp_path: Path) -> None:
    first = FileLock("sync", tmp_path).acquire()
    try:
        with pytest.raises(LockHeld) as waited:
            FileLock("sync", tmp_path).acquire(wait_s=0.1, poll_s=0.05)
        assert "after waiting 0.1 s" in str(waited.value) and "use --wait" not in str(waited.value)
        with pytest.raises(LockHeld, match="use --wait SECONDS"):
            FileLock("sync", tmp_path).acquire()
    finally:
        first.release()

"""`forge sync` against the lab's real sshd + dockerd hosts (Engine 20.10), gpu1 as the source
over SSH (images and faults: tests/lab/imagekit.py)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.errors import ConnectError
from forge.fleet import Pool
from forge.images.sync import sync_image
from forge.lock import FileLock
from tests.lab.envkit import forge_from_a_terminal
from tests.lab.imagekit import SOURCE, Images, cut_at, cut_before_manifest, cutting_pool, sync

pytestmark = pytest.mark.lab


# --------------------------------------------------------------------------- the cases


def test_a_fresh_host_gets_the_image_verified_and_tagged(inv: inventory.Inventory, images: Images) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(1000))
    report = sync(inv, ref, ["gpu2"])
    r = report.results["gpu2"]
    assert r.ok, r.reason
    assert r.value.action == "send" and r.value.layers_sent == 2 and r.value.codec == "zstd"
    assert 0 < r.value.wire_bytes < r.value.tar_bytes  # compressed
    assert images.same("gpu2", ref)


def test_an_unchanged_image_is_skipped(inv: inventory.Inventory, images: Images) -> None:
    ref = images.base()
    assert sync(inv, ref, ["gpu2"]).results["gpu2"].ok
    again = sync(inv, ref, ["gpu2"]).results["gpu2"]
    assert again.ok and again.value.action == "current" and again.value.wire_bytes == 0
    # Same image present but untagged: only the tag is set.
    images.lab.docker("gpu2", "image", "rm", ref)
    assert images.image_id("gpu2", images.image_id(SOURCE, ref)) is None  # untagged and unused: gone
    assert sync(inv, ref, ["gpu2"]).results["gpu2"].value.action == "send"


def test_a_partly_present_image_ships_only_the_missing_layer(inv: inventory.Inventory, images: Images) -> None:
    v1 = images.on_top(images.base(size=6 << 20), "v1", os.urandom(200_000))
    first = sync(inv, v1, ["gpu3"], compress="none").results["gpu3"]
    assert first.ok, first.reason
    v2 = images.on_top(v1, "v2", os.urandom(300_000))
    r = sync(inv, v2, ["gpu3"], compress="none").results["gpu3"]
    assert r.ok, r.reason
    assert r.value.layers_sent == 1 and r.value.layers_total == 3
    assert r.value.tar_bytes < 400_000 < first.value.tar_bytes  # the new layer (+ json), not the 6 MB base
    assert images.same("gpu3", v2)
    assert images.same("gpu3", v1)


def test_many_hosts_at_once_each_get_what_they_lack(inv: inventory.Inventory, images: Images) -> None:
    v1 = images.on_top(images.base(), "v1", os.urandom(50_000))
    assert sync(inv, v1, ["gpu2"]).results["gpu2"].ok
    v2 = images.on_top(v1, "v2", os.urandom(50_000))
    assert sync(inv, v2, ["gpu3"]).results["gpu3"].ok
    report = sync(inv, v2, ["gpu2", "gpu3", "gpu4"], concurrency=2)  # two waves
    sent = {r.host.name: (r.value.action, r.value.layers_sent) for r in report.results if r.value}
    assert all(r.ok for r in report.results), [r.reason for r in report.results]
    assert sent == {"gpu2": ("send", 1), "gpu3": ("current", 0), "gpu4": ("send", 3)}
    for h in ("gpu2", "gpu3", "gpu4"):
        assert images.same(h, v2)


# --------------------------------------------------------------------------- faults


def test_a_cut_connection_fails_that_host_only_and_a_rerun_completes(inv: inventory.Inventory, images: Images) -> None:
    ref = images.on_top(images.base(size=8 << 20), "v1", os.urandom(100_000))
    with cutting_pool(images.lab, "gpu2", cut_at(400_000)) as pool:  # well inside the base layer
        report = sync(inv, ref, ["gpu2", "gpu3"], pool=pool)
    assert report.results["gpu3"].ok, report.results["gpu3"].reason
    bad = report.results["gpu2"]
    assert not bad.ok and bad.reason
    assert "connection" in bad.reason
    assert images.image_id("gpu2", ref) is None
    assert images.leftovers("gpu2") == []
    again = sync(inv, ref, ["gpu2", "gpu3"])
    assert again.results["gpu2"].ok and again.results["gpu2"].value.action == "send"
    assert again.results["gpu3"].value.action == "current"
    assert images.same("gpu2", ref)


def test_a_cut_just_before_the_manifest_leaves_nothing_behind(inv: inventory.Inventory, images: Images) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(100_000))
    with cutting_pool(images.lab, "gpu4", cut_before_manifest) as pool:
        r = sync(inv, ref, ["gpu4"], pool=pool, compress="none").results["gpu4"]
    assert not r.ok
    assert images.image_id("gpu4", ref) is None
    assert images.leftovers("gpu4") == []
    assert sync(inv, ref, ["gpu4"]).results["gpu4"].ok


def test_a_host_that_is_down_is_reported_and_the_others_finish(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    ref = images.base()
    with lab.host_down("gpu4"):
        report = sync(inv, ref, ["gpu3", "gpu4"])
    assert report.results["gpu3"].ok
    assert not report.results["gpu4"].ok and isinstance(report.results["gpu4"].error, ConnectError)


@pytest.fixture()
def small_daemon(lab: Any) -> Iterator[str]:
    """A dockerd whose data root is a 64 MB ext4 file system, reached through gpu4's sshd.

    It runs in a network namespace of its own (``unshare --net``): with ``--bridge none`` a
    dockerd removes the ``docker0`` bridge of the namespace it starts in, which would break
    gpu4's own daemon for every later test."""
    if not shutil.which("mkfs.ext4") or os.geteuid() != 0:
        pytest.skip("needs root and mkfs.ext4")
    base = Path(tempfile.mkdtemp(prefix="forge-fulldisk-", dir="/var/tmp"))
    base.chmod(0o755)
    img, data = base / "disk.img", base / "data"
    data.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(data)], check=True)
    sock = base / "docker.sock"
    name = f"forgetest-{secrets.token_hex(3)}"
    proc = subprocess.Popen(
        [
            "unshare",
            "--net",
            "dockerd",
            "--host",
            f"unix://{sock}",
            "--data-root",
            str(data / "docker"),
            "--exec-root",
            str(base / "exec"),
            "--pidfile",
            str(base / "pid"),
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-masq=false",
            "--group",
            lab.user,
            "--containerd-namespace",
            name,
            "--containerd-plugins-namespace",
            name + "-p",
        ],
        stdout=open(base / "log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(120):
            if subprocess.run(["docker", "-H", f"unix://{sock}", "version"], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the small dockerd did not start: " + (base / "log").read_text()[-500:])
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["umount", "-l", str(data)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_a_full_disk_fails_that_host_cleanly(
    lab: Any, inv: inventory.Inventory, images: Images, small_daemon: str
) -> None:
    ref = images.on_top(images.base(size=20 << 20), "v1", os.urandom(60 << 20))  # ~80 MB > 64 MB disk
    full = replace(inv.host("gpu4"), name="gpu4-small", docker_host=small_daemon)
    with Pool() as pool:
        report = sync_image(ref, source=inv.host(SOURCE), targets=[inv.host("gpu3"), full], pool=pool, compress="none")
    assert report.results["gpu3"].ok
    bad = report.results["gpu4-small"]
    assert not bad.ok and "space" in bad.reason, bad.reason
    listing = subprocess.run(["docker", "-H", small_daemon, "image", "ls", "-aq"], capture_output=True, text=True)
    assert listing.stdout.split() == []  # nothing tagged, nothing left behind


# --------------------------------------------------------------------------- cron


def _forge(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "forge", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def test_overlapping_cron_runs_do_not_collide(lab: Any, images: Images, tmp_path: Path) -> None:
    ref = images.base()
    env = {"FORGE_LOCK_DIR": str(tmp_path), "FORGE_INVENTORY": str(lab.inventory_path)}
    args = ("sync", ref, "--from", SOURCE, "--to", "gpu2", "--quiet")
    holder = FileLock("sync", tmp_path).acquire()  # a first run in progress
    try:
        second = _forge(*args, env=env)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 6, err
        assert "another forge run holds the lock" in err and out == ""
        waiting = _forge(*args, "--wait", "60", env=env)
        time.sleep(1.0)
        assert waiting.poll() is None  # still waiting for the first run
    finally:
        holder.release()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and " gpu2 ok send " in lines[0]
    check = _forge("sync", ref, "--from", SOURCE, "--to", "gpu2,gpu3", "--check", "--quiet", env=env)
    out, _ = check.communicate(timeout=60)
    assert check.returncode == 4
    assert [line.split()[-1] for line in out.splitlines()] == ["current", "missing"]


def test_ctrl_c_twice_mid_transfer_exits_130_without_a_traceback_and_leaves_nothing_tagged(
    lab: Any, images: Images, tmp_path: Path
) -> None:
    """First Ctrl-C: the load is abandoned and cleaned up; a second one (an impatient user) used
    to print a traceback from Python's exit while the hosts' threads finished."""
    import signal

    ref = images.on_top(images.base(), "v1", os.urandom(40 << 20))  # bzip2: seconds to send
    env = {"FORGE_LOCK_DIR": str(tmp_path), "FORGE_INVENTORY": str(lab.inventory_path)}
    args = ("sync", ref, "--from", SOURCE, "--to", "gpu4", "--compress", "bzip2", "--quiet")
    run = forge_from_a_terminal(*args, env=env)  # a process group of its own, as Ctrl-C reaches
    lock_file = tmp_path / "sync.lock"
    while run.poll() is None and not (lock_file.exists() and lock_file.read_text().startswith(str(run.pid))):
        time.sleep(0.05)
    time.sleep(1.5)  # in the transfer
    os.killpg(run.pid, signal.SIGINT)
    time.sleep(0.2)
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err, err
    assert images.image_id("gpu4", ref) is None  # nothing tagged
    env_run = _forge(*args, env=env)
    out, err = env_run.communicate(timeout=300)
    assert env_run.returncode == 0, err
    assert " gpu4 ok send " in out
    assert images.same("gpu4", ref)
    assert images.leftovers("gpu4") == []

"""The rclone data volume for real: Debian's rclone as a Docker volume plugin (sftp backend).

`rclone serve docker` runs here, on gpu1's network (its network namespace, as the plugin would
run on the GPU host; behind a bastion only the GPU hosts reach the data host) and in this
machine's mount namespace; every lab daemon shares this machine's /run/docker/plugins, so they
all find it. forge creates the volume on a lab host with the data
host's known_hosts (without it rclone checks no host key) and reads the marker through it from
a throwaway container running as the user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from forge import inventory
from forge.env import volume
from forge.env.errors import VolumeError
from forge.env.launch import host_facts
from forge.fleet import Pool
from forge.lab import DATA_MARKER, DATA_MARKER_CONTENT
from tests.conftest import LabHandle

pytestmark = pytest.mark.lab

SOCKET = Path("/run/docker/plugins/rclone.sock")
HOST = "gpu1"


@pytest.fixture()
def rclone_plugin(lab: LabHandle) -> Iterator[None]:
    if not shutil.which("rclone") or os.geteuid() != 0:
        pytest.skip("needs root and Debian's rclone")
    if SOCKET.exists():
        pytest.skip(f"{SOCKET} exists already: another rclone plugin runs on this machine")
    base = Path(tempfile.mkdtemp(prefix="forge-rclone-", dir="/var/tmp"))
    SOCKET.parent.mkdir(parents=True, exist_ok=True)
    netns = lab.lab.config.host(HOST).netns
    proc = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{netns}",
            "rclone",
            "serve",
            "docker",
            "--base-dir",
            str(base / "mnt"),
            "--config",
            str(base / "rclone.conf"),
            "--cache-dir",
            str(base / "cache"),
        ],
        stdout=open(base / "log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            if SOCKET.exists():
                break
            time.sleep(0.1)
        else:
            pytest.fail("rclone serve docker did not open its socket: " + (base / "log").read_text()[-500:])
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["sh", "-c", f'grep -o "{base}/mnt/[^ ]*" /proc/mounts | xargs -r -n1 umount -l'], check=False)
        SOCKET.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def test_rclone_volume_reads_the_data_host_with_host_keys_checked(lab: LabHandle, rclone_plugin: None) -> None:
    inv = inventory.load_file(lab.inventory_path)
    data = replace(inv.data, driver="rclone", volume=f"forge-rclone-{os.getpid()}")
    host = inv.host(HOST)
    image = lab.load_base_image(HOST)
    with Pool() as pool:
        t = pool.get(host)
        facts = host_facts(t)
        spec = volume.spec_for(data, host_name=HOST, user=facts.user, home=facts.home)
        try:
            state = volume.ensure(t, spec, check_image=image, uid=facts.uid, gid=facts.gid, marker=DATA_MARKER)
            assert (state.driver, state.created) == ("rclone", True)
            # Again: idempotent, nothing recreated.
            again = volume.ensure(t, spec, check_image=image, uid=facts.uid, gid=facts.gid, marker=DATA_MARKER)
            assert again.created is False
            r = lab.docker(
                HOST,
                "run",
                "--rm",
                "-u",
                f"{facts.uid}:{facts.gid}",
                "-v",
                f"{spec.name}:/data:ro",
                image,
                "cat",
                f"/data/{DATA_MARKER}",
            )
            assert r.returncode == 0, r.stderr
            assert r.stdout == DATA_MARKER_CONTENT
            opts = json.loads(lab.docker(HOST, "volume", "inspect", "-f", "{{json .Options}}", spec.name).stdout)
            assert opts["sftp-known-hosts-file"] == inv.data.known_hosts
            assert opts["sftp-key-file"] == inv.data.identity_file
            assert not [k for k in opts if "pass" in k.lower()]
        finally:
            volume.drop(t, spec)
        assert lab.docker(HOST, "volume", "inspect", spec.name).returncode != 0


def test_rclone_volume_with_a_wrong_host_key_is_refused(lab: LabHandle, rclone_plugin: None, tmp_path: Path) -> None:
    """With a known_hosts that does not hold the data host's key, rclone refuses to connect
    and forge reports the volume unreadable, leaving no volume behind."""
    inv = inventory.load_file(lab.inventory_path)
    wrong = Path(str(lab.root)) / f"wrong-known-hosts-{os.getpid()}"
    other = next(line for line in lab.known_hosts.read_text().splitlines() if lab.address(HOST) in line)
    wrong.write_text(other.replace(lab.address(HOST), lab.data_address, 1) + "\n")
    wrong.chmod(0o644)
    data = replace(inv.data, driver="rclone", volume=f"forge-rclone-bad-{os.getpid()}", known_hosts=str(wrong))
    host = inv.host(HOST)
    image = lab.load_base_image(HOST)
    try:
        with Pool() as pool:
            t = pool.get(host)
            facts = host_facts(t)
            spec = volume.spec_for(data, host_name=HOST, user=facts.user, home=facts.home)
            with pytest.raises(VolumeError) as ei:
                volume.ensure(t, spec, check_image=image, uid=facts.uid, gid=facts.gid, marker=DATA_MARKER)
            assert "knownhosts: key mismatch" in str(ei.value)
            assert lab.docker(HOST, "volume", "inspect", spec.name).returncode != 0
    finally:
        wrong.unlink(missing_ok=True)

"""The forge lab itself, against its real sshd and dockerd: no mocks."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from forge.env.volume import VolumeSpec, create_args
from forge.lab import DATA_MARKER, DATA_MARKER_CONTENT, Lab, LabConfig, mounts, netns, state
from forge.lab import image as lab_image
from forge.lab.proc import pids_mentioning
from tests.conftest import LabHandle

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def base_image(lab: LabHandle) -> str:
    for host in lab.hosts[:2]:
        name = lab.load_base_image(host)
    return name


def test_ssh_to_every_host_verifies_its_host_key(lab: LabHandle) -> None:
    for name in ["data", *lab.hosts]:
        r = lab.ssh(name, "sh", "-c", 'printf "%s %s" "$FORGE_LAB_HOST" "$DOCKER_HOST"')
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{name} unix://{lab.root}/hosts/{name}/docker.sock"


def test_ssh_with_a_wrong_known_hosts_is_refused(lab: LabHandle, tmp_path: Path) -> None:
    other = lab.known_hosts.read_text().splitlines()
    # Give gpu1's address the data host's key.
    keys = {line.split()[0]: line.split(None, 1)[1] for line in other}
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{lab.address(lab.hosts[0])} {keys[lab.data_address]}\n")
    argv = lab.ssh_argv(lab.hosts[0], "true")
    argv[argv.index(f"UserKnownHostsFile={lab.known_hosts}")] = f"UserKnownHostsFile={wrong}"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in r.stderr or "verification failed" in r.stderr


def test_paramiko_with_reject_policy_and_the_lab_known_hosts(lab: LabHandle) -> None:
    for name in ["data", *lab.hosts]:
        client = paramiko.SSHClient()
        client.load_host_keys(str(lab.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            lab.address(name),
            username=lab.user,
            key_filename=str(lab.identity_file),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        try:
            _, out, _ = client.exec_command('printf %s "$FORGE_LAB_HOST"')
            assert out.read().decode() == name
        finally:
            client.close()
    # A client that does not know the host refuses it.
    stranger = paramiko.SSHClient()
    stranger.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        stranger.connect(
            lab.address(lab.hosts[0]),
            username=lab.user,
            key_filename=str(lab.identity_file),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    stranger.close()


def test_password_login_is_off(lab: LabHandle) -> None:
    argv = lab.ssh_argv(lab.hosts[0], "true")
    argv[argv.index("BatchMode=yes")] = "PreferredAuthentications=password"
    argv.insert(1, "-oBatchMode=yes")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 255 and "Permission denied" in r.stderr


def test_each_host_has_its_own_docker_daemon(lab: LabHandle, base_image: str) -> None:
    one, two = lab.hosts[0], lab.hosts[1]
    tag = f"forge-lab-test/only-on-{one}:{uuid.uuid4().hex[:8]}"
    assert lab.docker(one, "tag", base_image, tag).returncode == 0
    try:
        assert lab.docker(one, "image", "inspect", tag).returncode == 0
        assert lab.docker(two, "image", "inspect", tag).returncode != 0
        # Over SSH, each host's DOCKER_HOST points at its own daemon.
        assert lab.ssh(one, "docker", "image", "inspect", tag).returncode == 0
        r = lab.ssh(two, "docker", "image", "inspect", tag)
        assert r.returncode != 0 and "No such image" in r.stderr
        ids = {h: lab.docker(h, "info", "-f", "{{.ID}}").stdout.strip() for h in lab.hosts}
        assert len(set(ids.values())) == len(lab.hosts)
    finally:
        lab.docker(one, "rmi", tag)


def test_gpu_request_reaches_container_and_hook(lab: LabHandle, base_image: str) -> None:
    host = lab.hosts[0]
    name = f"forge-lab-gpu-{uuid.uuid4().hex[:8]}"
    before = len(lab.lab.gpu_hook_records(host))
    r = lab.docker(host, "run", "--name", name, "--gpus", '"device=1"', base_image, "env")
    try:
        assert r.returncode == 0, r.stderr
        assert "NVIDIA_VISIBLE_DEVICES=1" in r.stdout.splitlines()
        records = lab.lab.gpu_hook_records(host)[before:]
        assert [rec["NVIDIA_VISIBLE_DEVICES"] for rec in records] == ["1"]
        assert records[0]["argv"] == ["prestart"]
        inspect = lab.docker(host, "inspect", "-f", "{{json .HostConfig.DeviceRequests}}", name)
        requests = json.loads(inspect.stdout)
        assert requests[0]["DeviceIDs"] == ["1"]
        assert ["gpu"] in requests[0]["Capabilities"]
    finally:
        lab.docker(host, "rm", "-f", name)
    # The request is visible only on the host that served it.
    assert all(not any(rec.get("id") == name for rec in lab.lab.gpu_hook_records(h)) for h in lab.hosts[1:])


def test_set_gpus_writes_state_or_removes_nvidia_smi(lab: LabHandle) -> None:
    host = lab.hosts[-1]
    original = json.loads((lab.root / "hosts" / host / "gpus.json").read_text())
    try:
        state_ = {"gpus": [], "processes": [], "mode": "ok", "marker": "set-by-test"}
        lab.set_gpus(host, state_)
        r = lab.ssh(host, "sh", "-c", 'cat "$FORGE_LAB_GPU_STATE"; command -v nvidia-smi')
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout[: r.stdout.rindex("}") + 1]) == state_
        assert r.stdout.strip().endswith(f"{lab.root}/hosts/{host}/bin/nvidia-smi")
        lab.set_gpus(host, None)
        r = lab.ssh(host, "nvidia-smi")
        assert r.returncode == 127 and "not found" in r.stderr
    finally:
        lab.set_gpus(host, original)
    assert lab.ssh(host, "sh", "-c", "command -v nvidia-smi").returncode == 0


def test_host_down_stops_and_restarts_sshd(lab: LabHandle) -> None:
    host = lab.hosts[-1]
    with lab.host_down(host):
        r = lab.ssh(host, "true")
        assert r.returncode == 255
    assert lab.ssh(host, "true").returncode == 0


def test_container_reads_data_host_through_sshfs_volume(lab: LabHandle, base_image: str) -> None:
    host = lab.hosts[1]
    tag = uuid.uuid4().hex[:8]
    mnt = f"mnt/{host}-{tag}"  # relative to the lab user's home, which is the same on all hosts
    vol = f"forge-lab-data-{tag}"
    data = lab.lab.config.data_dir
    home = lab.lab.config.home
    sshfs = [
        "sshfs",
        f"{lab.user}@{lab.data_address}:{data}",
        mnt,
        "-o",
        "allow_other,BatchMode=yes,StrictHostKeyChecking=yes,"
        f"UserKnownHostsFile={home}/.ssh/known_hosts,IdentityFile={home}/.ssh/id_ed25519",
    ]
    # Mount as the lab user, in the GPU host's own session (its netns), like forge will.
    r = lab.ssh(host, "sh", "-c", 'm=$1; shift; mkdir -p "$m" && "$@" && readlink -f "$m"', "sh", mnt, *sshfs)
    assert r.returncode == 0, r.stderr
    mountpoint = r.stdout.strip().splitlines()[-1]
    try:
        assert (mountpoint, "fuse.sshfs") in mounts.mounts_under(lab.root)
        # The bind volume of the mount point, as forge creates it.
        spec = VolumeSpec(vol, "sshfs", lab.data_address, str(data), user=lab.user, mountpoint=mountpoint)
        r = lab.ssh(host, "docker", *create_args(spec))
        assert r.returncode == 0, r.stderr
        r = lab.ssh(host, "docker", "run", "--rm", "-v", f"{vol}:/data", base_image, "cat", f"/data/{DATA_MARKER}")
        assert r.returncode == 0, r.stderr
        assert r.stdout == DATA_MARKER_CONTENT
    finally:
        lab.ssh(host, "docker", "volume", "rm", "-f", vol)
        lab.ssh(host, "sh", "-c", 'fusermount -u "$1"; rmdir "$1"', "sh", mnt)
    assert (mountpoint, "fuse.sshfs") not in mounts.mounts_under(lab.root)


# Down, on a second, small lab: its own root, bridge, subnet, namespaces and user -------------


@pytest.fixture()
def small_lab(lab: LabHandle) -> Iterator[Lab]:
    """A 1-GPU-host lab beside the session's lab (the session lab must survive its down).
    Its names are fixed, so concurrent test runs on one machine take turns (a lock)."""
    with open("/run/forge-lab-test-small.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _small_lab(lab)


def _small_lab(lab: LabHandle) -> Iterator[Lab]:
    # Not under /tmp: sshd refuses keys below a world-writable directory. Short: socket paths.
    root = Path(tempfile.mkdtemp(prefix="forge-lab-t", dir="/var/lib"))
    cfg = LabConfig(
        root=root,
        hosts=1,
        bridge="forgelabt0",
        network="10.77.0.128/26",
        netns_prefix="forgelabt-",
        docker_subnet_base=100,
        user="forgelabt",
    )
    # Reuse the session lab's cached base image instead of running debootstrap again.
    cached = lab.lab.ensure_base_image()
    cfg.cache_dir.mkdir(parents=True)
    try:
        os.link(cached, lab_image.cached_tar(cfg))
    except OSError:
        shutil.copyfile(cached, lab_image.cached_tar(cfg))
    small = Lab(cfg)
    try:
        yield small
    finally:
        small.down(purge_cache=True)
        shutil.rmtree(root, ignore_errors=True)


def _leftovers(cfg: LabConfig) -> dict[str, object]:
    import pwd

    rules = netns.tagged_rules(cfg)
    users = [u.pw_name for u in pwd.getpwall() if u.pw_name == cfg.user]
    procs = pids_mentioning(str(cfg.root) + "/", {"containerd-shim-runc-v2", "containerd", "dockerd", "sshd", "sshfs"})
    return {
        "netns": netns.list_netns(cfg.netns_prefix),
        "bridge": netns.link_exists(cfg.bridge),
        "veths": [h.veth for h in cfg.all_hosts() if netns.link_exists(h.veth)],
        "mounts": mounts.mounts_under(cfg.root),
        "rules": rules,
        "user": users,
        "processes": sorted(procs),
        "files": sorted(p.name for p in cfg.root.iterdir()) if cfg.root.exists() else [],
    }


CLEAN = {"netns": [], "bridge": False, "veths": [], "mounts": [], "rules": [], "user": [], "processes": [], "files": []}


def test_down_leaves_nothing_behind(lab: LabHandle, small_lab: Lab) -> None:
    cfg = small_lab.config
    small_lab.up()
    small_lab.up()  # idempotent
    assert small_lab.status().up
    host = small_lab.gpu_hosts[0]
    small_lab.load_base_image(host)
    # Something of everything: a running container, an sshfs (FUSE) mount made by the user.
    r = small_lab.docker(
        host, "run", "-d", "--gpus", "all", "-p", "2222:22", "forge-lab/debian:bookworm", "sleep", "infinity"
    )
    assert r.returncode == 0, r.stderr
    home = Path(f"{cfg.root}/home/{cfg.user}")
    mount = 'mkdir -p m && sshfs -o BatchMode=yes,StrictHostKeyChecking=yes "$1" m'
    source = f"{small_lab.address('data')}:{cfg.data_dir}"
    argv = small_lab.ssh_argv(host, "sh", "-c", mount, "sh", source)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert (str(home / "m"), "fuse.sshfs") in mounts.mounts_under(cfg.root)
    assert _leftovers(cfg)["processes"]

    small_lab.down(purge_cache=False)
    left = _leftovers(cfg)
    assert left == {**CLEAN, "files": ["cache"]}
    # The session's lab is untouched.
    assert lab.lab.status().up
    assert lab.ssh(lab.hosts[0], "true").returncode == 0
    assert state.load(cfg.root) is None


def test_down_of_a_half_built_lab(lab: LabHandle, small_lab: Lab) -> None:
    cfg = small_lab.config
    state.save(cfg)
    netns.ensure_bridge(cfg)
    netns.ensure_firewall(cfg)
    netns.ensure_host_network(cfg, cfg.host("data"))
    small_lab.down(purge_cache=True)
    assert _leftovers(cfg) == CLEAN
    assert lab.lab.status().up


def test_up_with_another_host_count_is_refused(lab: LabHandle) -> None:
    from forge.lab import LabError

    with pytest.raises(LabError, match="run `forge lab down"):
        Lab(LabConfig(root=lab.root, hosts=len(lab.hosts) + 1)).up()

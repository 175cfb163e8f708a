"""The forge lab itself, against its real sshd and dockerd: no mocks."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paramiko
import pytest

from forge.env.volume import VolumeSpec, create_args
from forge.lab import DATA_MARKER, DATA_MARKER_CONTENT, Lab, LabConfig, latency, mounts, netns, state, suiteroot
from forge.lab import image as lab_image
from forge.lab.proc import pids_mentioning
from tests.conftest import LabHandle

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def base_image(lab: LabHandle) -> str:
    for host in lab.hosts:
        name = lab.load_base_image(host)
    return name


def one_host_per_flavor(lab: LabHandle) -> list[str]:
    """The first GPU host of each flavor the lab has."""
    first: dict[str, str] = {}
    for host in lab.hosts:
        first.setdefault(lab.flavor(host), host)
    return list(first.values())


ENGINES = {"bookworm": "20.10.", "trixie": "26.1.", "trixie-containerd": "26.1."}


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


def _paramiko(lab: LabHandle, name: str, known_hosts: Path | None, sock: Any = None) -> paramiko.SSHClient:
    """A paramiko client logged in to a lab host, refusing host keys not in ``known_hosts``."""
    client = paramiko.SSHClient()
    if known_hosts is not None:
        client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            lab.address(name),
            username=lab.user,
            key_filename=str(lab.identity_file),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            sock=sock,
        )
    except BaseException:
        client.close()
        raise
    return client


@contextmanager
def _paramiko_to(lab: LabHandle, name: str, known_hosts: Path | None) -> Iterator[paramiko.SSHClient]:
    """A client of ``name``: directly, or behind a bastion through a channel of the jump host
    (whose key is checked against the lab's known_hosts)."""
    jump = _paramiko(lab, "jump", lab.known_hosts) if lab.bastion else None
    try:
        transport = jump.get_transport() if jump else None
        sock = transport.open_channel("direct-tcpip", (lab.address(name), 22), ("127.0.0.1", 0)) if transport else None
        client = _paramiko(lab, name, known_hosts, sock)
        try:
            yield client
        finally:
            client.close()
    finally:
        if jump is not None:
            jump.close()


def test_paramiko_with_reject_policy_and_the_lab_known_hosts(lab: LabHandle) -> None:
    for name in ["data", *lab.hosts]:
        with _paramiko_to(lab, name, lab.known_hosts) as client:
            _, out, _ = client.exec_command('printf %s "$FORGE_LAB_HOST"')
            assert out.read().decode() == name
    # A client that does not know the host refuses it.
    with pytest.raises(paramiko.SSHException), _paramiko_to(lab, lab.hosts[0], None):
        pass


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


def test_gpu_request_reaches_container_and_hook_on_every_flavor(lab: LabHandle, base_image: str) -> None:
    for host in one_host_per_flavor(lab):
        name = f"forge-lab-gpu-{uuid.uuid4().hex[:8]}"
        before = len(lab.lab.gpu_hook_records(host))
        r = lab.docker(host, "run", "--name", name, "--gpus", '"device=1"', base_image, "env")
        try:
            assert r.returncode == 0, f"{host} ({lab.flavor(host)}): {r.stderr}"
            assert "NVIDIA_VISIBLE_DEVICES=1" in r.stdout.splitlines()
            records = lab.lab.gpu_hook_records(host)[before:]
            assert [rec["NVIDIA_VISIBLE_DEVICES"] for rec in records] == ["1"], lab.flavor(host)
            assert records[0]["argv"] == ["prestart"]
            inspect = lab.docker(host, "inspect", "-f", "{{json .HostConfig.DeviceRequests}}", name)
            requests = json.loads(inspect.stdout)
            assert requests[0]["DeviceIDs"] == ["1"]
            assert ["gpu"] in requests[0]["Capabilities"]
        finally:
            lab.docker(host, "rm", "-f", name)
        # The request is visible only on the host that served it.
        others = [h for h in lab.hosts if h != host]
        assert all(not any(rec.get("id") == name for rec in lab.lab.gpu_hook_records(h)) for h in others)


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


# Flavors, the bastion and the other user ---------------------------------------------------


def test_each_flavor_reports_its_engine_through_ssh(lab: LabHandle) -> None:
    status = {h.name: h for h in lab.lab.status().hosts}
    for host in lab.hosts:
        flavor = lab.flavor(host)
        r = lab.ssh(host, "docker", "version", "--format", "{{.Server.Version}}")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(ENGINES[flavor]), f"{host} ({flavor}): {r.stdout}"
        assert (status[host].flavor, status[host].engine) == (flavor, r.stdout.strip())
        r = lab.ssh(host, "docker", "info", "--format", "{{json .DriverStatus}}")
        assert r.returncode == 0, r.stderr
        snapshotter = ["driver-type", "io.containerd.snapshotter.v1"] in json.loads(r.stdout)
        assert snapshotter == (flavor == "trixie-containerd"), f"{host} ({flavor}): {r.stdout}"


def _direct_banner(address: str, port: int, timeout: float = 5) -> str:
    """The first bytes a TCP port sends to this machine, or the error."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            return s.recv(7).decode(errors="replace")
    except OSError as e:
        return f"error: {e}"


def _banner(lab: LabHandle, address: str, port: int) -> str:
    """The first bytes a TCP port sends: from here, or behind a bastion from the jump host."""
    if not lab.bastion:
        return _direct_banner(address, port)
    script = 'exec 3<>"/dev/tcp/$1/$2" && head -c 7 <&3'
    r = lab.ssh("jump", "timeout", "5", "bash", "-c", script, "bash", address, str(port))
    return r.stdout if r.returncode == 0 else f"error: {r.stderr}"


def test_published_port_is_reachable_at_the_host_address_on_every_flavor(lab: LabHandle, base_image: str) -> None:
    sshd = "mkdir -p /run/sshd && ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -e"
    for host in one_host_per_flavor(lab):
        port = random.randrange(20000, 30000)
        name = f"forge-lab-port-{uuid.uuid4().hex[:8]}"
        r = lab.docker(host, "run", "-d", "--name", name, "-p", f"{port}:22", base_image, "sh", "-c", sshd)
        try:
            assert r.returncode == 0, f"{host} ({lab.flavor(host)}): {r.stderr}"
            deadline = time.monotonic() + 30
            while (seen := _banner(lab, lab.address(host), port)) != "SSH-2.0" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert seen == "SSH-2.0", f"{host} ({lab.flavor(host)}) port {port}: {seen}"
        finally:
            lab.docker(host, "rm", "-f", name)


#: Run by ``docker exec``: what it sees as pid 1, its host name, and whether the lab's root
#: (on this machine, never in the image) is there.
EXEC_PROBE = 'tr "\\0" " " </proc/1/cmdline; echo; cat /etc/hostname; if test -e "$1"; then echo machine; fi'


def test_exec_runs_inside_the_container_on_every_flavor(lab: LabHandle, base_image: str) -> None:
    """``docker exec`` joins the container: its file system and its pid 1, never this
    machine's (a chrooted engine once sent exec to this machine's root, as root)."""
    for host in one_host_per_flavor(lab):
        name = f"forge-lab-exec-{uuid.uuid4().hex[:8]}"
        r = lab.docker(host, "run", "-d", "--name", name, "-u", "0", "--entrypoint", "sleep", base_image, "300")
        try:
            assert r.returncode == 0, f"{host} ({lab.flavor(host)}): {r.stderr}"
            short_id = r.stdout.strip()[:12]
            for workdir in ([], ["-w", "/"]):
                r = lab.docker(host, "exec", *workdir, name, "sh", "-c", EXEC_PROBE, "sh", str(lab.root))
                assert r.returncode == 0, f"{host} ({lab.flavor(host)}): {r.stderr}"
                # Docker names the container's host after its id, in a file only it has.
                assert r.stdout.splitlines() == ["sleep 300 ", short_id], f"{host} ({lab.flavor(host)}): {r.stdout}"
        finally:
            lab.docker(host, "rm", "-f", name)


def test_docker_socket_belongs_to_the_docker_group_of_both_users(lab: LabHandle) -> None:
    group = lab.lab.config.docker_group
    for host in lab.hosts:
        r = lab.ssh(host, "sh", "-c", 'stat -c %G:%a "${DOCKER_HOST#unix://}"; id -Gn')
        assert r.returncode == 0, r.stderr
        mode, groups = r.stdout.split("\n", 1)
        assert mode == f"{group}:660"
        assert group in groups.split()


def test_the_other_user_logs_in_with_its_own_key_and_runs_docker(lab: LabHandle) -> None:
    for name in ["data", *lab.hosts] + (["jump"] if lab.bastion else []):
        r = lab.ssh_as_other(name, "sh", "-c", 'id -un; printf %s "$FORGE_LAB_HOST"')
        assert r.returncode == 0, f"{name}: {r.stderr}"
        assert r.stdout == f"{lab.other_user}\n{name}"
    for host in lab.hosts:
        r = lab.docker_as_other(host, "version", "--format", "{{.Server.Version}}")
        assert r.returncode == 0, f"{host}: {r.stderr}"
        assert r.stdout.startswith(ENGINES[lab.flavor(host)])


def _login(lab: LabHandle, name: str, user: str, key: Path) -> subprocess.CompletedProcess[str]:
    """OpenSSH to ``name`` as ``user`` offering only ``key`` (the host key checked); behind a
    bastion, the jump hop as the lab user by the lab's ssh_config."""
    cfg = lab.lab.config
    argv = ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    argv += ["-o", f"UserKnownHostsFile={cfg.known_hosts}", "-o", "IdentitiesOnly=yes", "-i", str(key)]
    if lab.bastion and name != "jump":
        argv += ["-o", f"ProxyCommand=ssh -F {cfg.ssh_config} -W %h:%p jump"]
    argv += [f"{user}@{lab.address(name)}", "id -un"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_neither_users_key_logs_in_as_the_other(lab: LabHandle) -> None:
    cfg = lab.lab.config
    for name in ["data", lab.hosts[0]] + (["jump"] if lab.bastion else []):
        assert _login(lab, name, lab.user, cfg.identity_file).stdout == f"{lab.user}\n"
        assert _login(lab, name, lab.other_user, cfg.other_identity_file).stdout == f"{lab.other_user}\n"
        for user, key in ((lab.user, cfg.other_identity_file), (lab.other_user, cfg.identity_file)):
            r = _login(lab, name, user, key)
            assert r.returncode == 255 and "Permission denied" in r.stderr, f"{name} as {user}: {r.stderr}"


def _needs_bastion(lab: LabHandle) -> None:
    if not lab.bastion:
        pytest.skip("the session's lab has no bastion (FORGE_LAB_BASTION=1 gives it one)")


def test_behind_the_bastion_only_the_jump_host_reaches_the_hosts(lab: LabHandle) -> None:
    _needs_bastion(lab)
    for name in ["data", lab.hosts[0]]:
        # No sshd answers from here (this machine's uplink may accept any connection).
        assert not _direct_banner(lab.address(name), 22, timeout=3).startswith("SSH-")
        r = lab.ssh(name, "printenv", "FORGE_LAB_HOST")
        assert (r.returncode, r.stdout) == (0, f"{name}\n"), r.stderr
    # GPU hosts reach the data host directly, on the inner network.
    assert lab.ssh(lab.hosts[0], "bash", "-c", f"</dev/tcp/{lab.data_address}/22").returncode == 0
    text = lab.inventory_path.read_text()
    assert f'ssh_config = "{lab.lab.config.ssh_config}"' in text
    assert all(f'ssh_alias = "{h}"' in text for h in lab.hosts)


@pytest.mark.parametrize("jump_key", ["unknown", "changed"])
def test_a_jump_host_with_an_unknown_or_changed_key_is_refused(lab: LabHandle, tmp_path: Path, jump_key: str) -> None:
    _needs_bastion(lab)
    cfg = lab.lab.config
    jump = lab.address("jump")
    lines = cfg.known_hosts.read_text().splitlines()
    others = [line for line in lines if line.split()[0] != jump]
    assert len(others) == len(lines) - 1
    if jump_key == "changed":  # the jump host's address with the data host's key
        data_key = next(line for line in lines if line.split()[0] == lab.data_address).split(None, 1)[1]
        others.append(f"{jump} {data_key}")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("\n".join(others) + "\n")
    config = tmp_path / "config"
    config.write_text(cfg.ssh_config.read_text().replace(str(cfg.known_hosts), str(known_hosts)))
    argv = lab.ssh_argv(lab.hosts[0], "true")
    argv[argv.index(str(cfg.ssh_config))] = str(config)
    argv[argv.index(f"UserKnownHostsFile={cfg.known_hosts}")] = f"UserKnownHostsFile={known_hosts}"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 255, r.stderr
    if jump_key == "changed":
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr
    else:
        assert "Host key verification failed" in r.stderr
    # The same files, with the jump host's key in place, let it through.
    known_hosts.write_text(cfg.known_hosts.read_text())
    assert subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode == 0


# Down, on a second, small lab: its own root, bridge, subnet, namespaces and user -------------


@pytest.fixture()
def small_lab(lab: LabHandle) -> Iterator[Lab]:
    """A 1-GPU-host lab beside the session's lab (the session lab must survive its down).
    Its names are fixed, so concurrent test runs on one machine take turns (a lock)."""
    with open("/run/forge-lab-test-small.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _small_lab(lab)


def _small_lab(lab: LabHandle) -> Iterator[Lab]:
    """Its one GPU host runs Debian 13's engine with the containerd store, behind a bastion:
    the most a lab can leave behind."""
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
        flavors=("trixie-containerd",),
        bastion=True,
    )
    # Reuse the session lab's cached base image and engine root instead of running
    # debootstrap again (copies: a lab root is a mount of its own, hard links cannot cross it).
    small = Lab(cfg)
    try:
        cfg.cache_dir.mkdir(parents=True)
        shutil.copyfile(lab.lab.ensure_base_image(), lab_image.cached_tar(cfg))
        engine_root = suiteroot.path(lab.lab.config, "trixie")
        if engine_root.is_dir():
            subprocess.run(["cp", "-a", str(engine_root), str(suiteroot.path(cfg, "trixie"))], check=True)
        yield small
    finally:
        small.down(purge_cache=True)
        shutil.rmtree(root, ignore_errors=True)


PROGRAMS = {"containerd-shim-runc-v2", "containerd", "dockerd", "sshd", "sshfs", "tini", "unshare", "docker-proxy"}


def _leftovers(cfg: LabConfig) -> dict[str, object]:
    import grp
    import pwd

    rules = netns.tagged_rules(cfg) + netns.tagged_rules(cfg, "nat")
    users = [u.pw_name for u in pwd.getpwall() if u.pw_name in (cfg.user, cfg.other_user)]
    groups = [g.gr_name for g in grp.getgrall() if g.gr_name == cfg.docker_group]
    procs = pids_mentioning(str(cfg.root) + "/", PROGRAMS)
    port = f"--port {latency.port_of(cfg.network)} ".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):  # the delay proxy (forge lab up --latency)
        with contextlib.suppress(OSError):
            if b"forge.lab.latency" in (cmdline := Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")):
                procs |= {int(pid)} if port in cmdline else set()
    findmnt = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=True).stdout
    veths = [h.veth for h in cfg.all_hosts()] + [cfg.jump_inner_veth]
    return {
        "netns": netns.list_netns(cfg.netns_prefix),
        "bridge": [b for b in (cfg.bridge, cfg.inner_bridge) if netns.link_exists(b)],
        "veths": [v for v in veths if netns.link_exists(v)],
        "mounts": mounts.mounts_under(cfg.root) + [m for m in findmnt.split() if m.startswith(f"{cfg.root}/")],
        "rules": rules,
        "user": users + groups,
        "processes": sorted(procs),
        "files": sorted(p.name for p in cfg.root.iterdir()) if cfg.root.exists() else [],
    }


CLEAN: dict[str, object] = {
    "netns": [],
    "bridge": [],
    "veths": [],
    "mounts": [],
    "rules": [],
    "user": [],
    "processes": [],
    "files": [],
}


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
    assert r.ok, r.stderr
    home = Path(f"{cfg.root}/home/{cfg.user}")
    mount = 'mkdir -p m && sshfs -o BatchMode=yes,StrictHostKeyChecking=yes "$1" m'
    source = f"{small_lab.address('data')}:{cfg.data_dir}"
    argv = small_lab.ssh_argv(host, "sh", "-c", mount, "sh", source)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert (str(home / "m"), "fuse.sshfs") in mounts.mounts_under(cfg.root)
    # A fleet far away: every SSH link from here delayed 40 ms each way, through the bastion too.
    small_lab.set_latency(40)
    jump = small_lab.config.jump_host().address
    assert latency.measure(jump, 22, rounds=3) >= 0.040  # the banner comes back after the delay
    before = _leftovers(cfg)
    assert before["processes"] and len(before["netns"]) == 3 and len(before["bridge"]) == 2  # type: ignore[arg-type]
    assert len(before["rules"]) == 2 + 2  # type: ignore[arg-type]  # two bridges; two networks redirected
    # Through the jump host, the host's engine is Debian 13's, with the containerd store.
    argv = small_lab.ssh_argv(host, "docker", "info", "--format", "{{.ServerVersion}} {{json .DriverStatus}}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.startswith("26.1.") and "io.containerd.snapshotter.v1" in r.stdout, r.stderr

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
    netns.ensure_bridges(cfg)
    netns.ensure_firewall(cfg)
    netns.ensure_host_network(cfg, cfg.host("data"))
    netns.ensure_host_network(cfg, cfg.host("jump"))
    small_lab.down(purge_cache=True)
    assert _leftovers(cfg) == CLEAN
    assert lab.lab.status().up


def test_up_with_other_settings_is_refused(lab: LabHandle) -> None:
    from forge.lab import LabError

    cfg = lab.lab.config
    with pytest.raises(LabError, match="hosts 4, not 5.*run `forge lab down"):
        Lab(dataclasses.replace(cfg, hosts=len(lab.hosts) + 1)).up()
    with pytest.raises(LabError, match=r"flavors \[.*\], not \['trixie'\]"):
        Lab(dataclasses.replace(cfg, flavors=("trixie",))).up()
    with pytest.raises(LabError, match="bastion"):
        Lab(dataclasses.replace(cfg, bastion=not cfg.bastion)).up()

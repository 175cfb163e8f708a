"""The dev image for real: built by `forge build` on a lab host from the offline Debian base,
run as a user (`-u UID:GID`) with a GPU and the data volume, and reached with `ssh -X`.

Checked in the SSH session: the uid, the container's environment, the data volume, sudo,
keys-only login, per-container host keys, and X11 forwarding to an Xvfb on this machine.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from forge import inventory
from forge.env import volume
from forge.env.launch import host_facts
from forge.fleet import Pool
from forge.lab import DATA_MARKER, DATA_MARKER_CONTENT
from forge.lab.toolchain import load_toolchain_image
from tests.conftest import LabHandle

pytestmark = pytest.mark.lab

HOST_INDEX = 2  # gpu3: one host for the whole module
X_CLIENT = Path(__file__).parent / "assets" / "x11_probe.py"
SESSION_ENV = {
    # What a CUDA base image sets with ENV; the entrypoint must hand it to SSH sessions.
    "CUDA_HOME": "/usr/local/cuda",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64:/usr/local/nvidia/lib64",
    "PATH": "/opt/forge-test/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "FORGE_TEST_VALUE": "spaces and $dollar 'quotes' \"too\"",
}


@dataclass
class Dev:
    """What the module's tests share: the host, its image, the data volume."""

    lab: LabHandle
    host: str
    image: str
    base: str
    uid: int
    gid: int
    volume: str

    @property
    def address(self) -> str:
        return self.lab.address(self.host)


def _forge(lab: LabHandle, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge", "-i", str(lab.inventory_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def dev(lab: LabHandle) -> Iterator[Dev]:
    host = lab.hosts[HOST_INDEX]
    base = lab.load_base_image(host)
    toolchain = load_toolchain_image(lab.lab, host)
    user = pwd.getpwnam(lab.user)
    tag = f"forge-lab-test/dev:{uuid.uuid4().hex[:8]}"
    # Defaults: the SSH user on the host, its uid and gid there, the inventory key's .pub.
    r = _forge(
        lab, "build", "--host", host, "--tag", tag, "--base", base, "--toolchain", toolchain, "--no-packages", "--quiet"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.fullmatch(
        rf"{host}: built {re.escape(tag)} \(sha256:[0-9a-f]{{64}}\) for {lab.user} "
        rf"{user.pw_uid}:{user.pw_gid} in [0-9.]+ s\n",
        r.stdout,
    ), r.stdout

    # The data volume as forge makes it (sshfs to the data host, a bind volume of the mount),
    # under a name of its own.
    inv = inventory.load_file(lab.inventory_path)
    data = inventory.DataSettings(**{**vars(inv.data), "volume": f"forge-lab-dev-{uuid.uuid4().hex[:8]}"})
    target = inv.host(host)
    with Pool() as pool:
        t = pool.get(target)
        facts = host_facts(t)
        vol = volume.spec_for(data, host_name=host, user=facts.user, home=facts.home)
        volume.ensure(t, vol, check_image=base, uid=facts.uid, gid=facts.gid, marker=DATA_MARKER)
    try:
        yield Dev(lab, host, tag, base, user.pw_uid, user.pw_gid, vol.name)
    finally:
        with Pool() as pool:
            volume.drop(pool.get(target), vol)
        lab.docker(host, "rmi", tag)


@dataclass
class Container:
    name: str
    port: int
    known_hosts: Path


def _start(dev: Dev, tmp_path: Path, *, uid: int, gid: int) -> Container:
    """`docker run` as forge launches the environment, over SSH as the lab user."""
    name = f"forge-lab-dev-{uuid.uuid4().hex[:8]}"
    env = [a for k, v in SESSION_ENV.items() for a in ("-e", f"{k}={v}")]
    for _ in range(5):
        port = 23000 + secrets.randbelow(1000)
        r = dev.lab.ssh(
            dev.host,
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "-u",
            f"{uid}:{gid}",
            "--ipc=host",
            "--gpus",
            '"device=0"',
            "-p",
            f"{port}:22",
            "-v",
            f"{dev.volume}:/data",
            "--label",
            "forge.env=dev",
            "--label",
            f"forge.owner={dev.lab.user}",
            *env,
            dev.image,
        )
        if r.returncode == 0:
            break
        dev.lab.docker(dev.host, "rm", "-f", name)
        assert "port is already allocated" in r.stderr or "address already in use" in r.stderr, r.stderr
    else:
        pytest.fail("no free port for the container's sshd")
    known_hosts = tmp_path / f"known_hosts-{name}"
    # Record the container's host key as it comes up; later logins must match it exactly.
    # Scanned on the GPU host itself, so it works behind a bastion too; the names are
    # rewritten to the address the test's ssh connects to.
    for _ in range(300):
        scan = dev.lab.ssh(dev.host, "ssh-keyscan", "-T", "2", "-p", str(port), "127.0.0.1")
        if scan.stdout.strip():
            break
        state = dev.lab.docker(dev.host, "inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", dev.lab.docker(dev.host, "logs", name).stderr
    else:
        pytest.fail(f"the container's sshd never answered: {dev.lab.docker(dev.host, 'logs', name).stderr}")
    known_hosts.write_text(scan.stdout.replace(f"[127.0.0.1]:{port}", f"[{dev.address}]:{port}"))
    return Container(name, port, known_hosts)


@pytest.fixture()
def container(dev: Dev, tmp_path: Path) -> Iterator[Container]:
    c = _start(dev, tmp_path, uid=dev.uid, gid=dev.gid)
    try:
        yield c
    finally:
        dev.lab.docker(dev.host, "rm", "-f", c.name)


def _ssh_argv(dev: Dev, c: Container, *command: str, options: tuple[str, ...] = ()) -> list[str]:
    # The lab's ssh command line to the container's host; ssh checks a key in the global
    # known_hosts file too (the user one, the lab's, has the hosts' port 22 only).
    own = ("-p", str(c.port), "-o", f"GlobalKnownHostsFile={c.known_hosts}")
    return dev.lab.lab.ssh_argv(dev.host, *command, options=(*own, *options))


def _ssh(
    dev: Dev,
    c: Container,
    *command: str,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _ssh_argv(dev, c, *command, options=options),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        input=stdin,
    )


def test_session_runs_as_the_requested_user_with_the_containers_environment(dev: Dev, container: Container) -> None:
    r = _ssh(dev, container, "sh", "-c", 'id -u; id -g; id -un; echo "$HOME"; env')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == [str(dev.uid), str(dev.gid), dev.lab.user, f"/home/{dev.lab.user}"]
    session = dict(line.split("=", 1) for line in lines[4:] if "=" in line)
    for name, value in SESSION_ENV.items():
        assert session.get(name) == value, name
    # --gpus reached the container, and its NVIDIA_* variables reach the session.
    assert session.get("NVIDIA_VISIBLE_DEVICES") == "0"
    # A login shell too (/etc/profile resets PATH; /etc/profile.d/forge-dev.sh puts it back).
    r = _ssh(dev, container, "bash", "-lc", 'printf "%s\\n%s\\n" "$PATH" "$CUDA_HOME"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [SESSION_ENV["PATH"], SESSION_ENV["CUDA_HOME"]]


def test_sshd_runs_as_the_user_and_sudo_needs_no_password(dev: Dev, container: Container) -> None:
    r = _ssh(
        dev,
        container,
        "sh",
        "-c",
        'stat -c %u "/proc/$(cat /var/lib/forge-dev/sshd/sshd.pid)"; sudo -n id -u; cat /data/"$1"',
        "sh",
        DATA_MARKER,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [str(dev.uid), "0"]
    # The data volume, through sshfs from the data host.
    assert r.stdout.split("\n", 2)[2] == DATA_MARKER_CONTENT


def test_keys_only_and_per_container_host_keys(dev: Dev, container: Container, tmp_path: Path) -> None:
    password = _ssh(dev, container, "true", options=("-o", "PreferredAuthentications=password,keyboard-interactive"))
    assert password.returncode == 255 and "Permission denied" in password.stderr
    other_key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    argv = _ssh_argv(dev, container, "true")
    argv[argv.index(str(dev.lab.identity_file))] = str(other_key)
    if dev.lab.ssh_config is not None:  # behind a bastion the config offers the lab key too: not for this hop
        blocks = dev.lab.ssh_config.read_text().split("\nHost ")
        key, stranger_key = str(dev.lab.identity_file), str(other_key)
        swapped = [b.replace(key, stranger_key) if b.startswith(f"{dev.host}\n") else b for b in blocks]
        assert swapped != blocks
        stranger_config = tmp_path / "stranger_config"
        stranger_config.write_text("\nHost ".join(swapped))
        argv[argv.index(str(dev.lab.ssh_config))] = str(stranger_config)
    stranger = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert stranger.returncode == 255 and "Permission denied" in stranger.stderr
    # The host keys are made in the container, not taken from the base image, and differ per container.
    r = dev.lab.docker(dev.host, "run", "--rm", "--entrypoint", "cat", dev.base, "/etc/ssh/ssh_host_ed25519_key.pub")
    base_key = r.stdout.split()[1] if r.returncode == 0 else "none"
    mine = {line.split()[2] for line in container.known_hosts.read_text().splitlines()}
    assert base_key not in mine
    second = _start(dev, tmp_path, uid=dev.uid, gid=dev.gid)
    try:
        assert not mine & {line.split()[2] for line in second.known_hosts.read_text().splitlines()}
        # Logging in to one with the other's key recorded is refused.
        wrong = _ssh_argv(dev, replace(second, known_hosts=container.known_hosts), "true")
        r = subprocess.run(wrong, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 255
    finally:
        dev.lab.docker(dev.host, "rm", "-f", second.name)


def test_a_container_started_with_another_uid_gets_that_uid(dev: Dev, tmp_path: Path) -> None:
    uid, gid = dev.uid + 3320, dev.gid + 3321
    c = _start(dev, tmp_path, uid=uid, gid=gid)
    try:
        r = _ssh(
            dev,
            c,
            "sh",
            "-c",
            'id -u; id -g; id -un; stat -c "%u:%g" ~/.ssh/authorized_keys; '
            'sudo -n id -u; cat /data/"$1" >/dev/null && echo data-ok',
            "sh",
            DATA_MARKER,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [str(uid), str(gid), dev.lab.user, f"{uid}:{gid}", "0", "data-ok"]
        # Once per container: another uid cannot take the user over afterwards. (From /: the
        # home is the new uid's now, and Engine 26's runc fails an exec it cannot chdir into.)
        r = dev.lab.docker(dev.host, "exec", "-u", "5555:5555", "-w", "/", c.name, "/usr/local/sbin/forge-fixuid")
        assert r.returncode == 1 and "already changed once" in r.stderr
        logs = dev.lab.docker(dev.host, "logs", c.name)
        assert f"is now {uid}:{gid} (was {dev.uid}:{dev.gid})" in logs.stderr
    finally:
        dev.lab.docker(dev.host, "rm", "-f", c.name)


@pytest.fixture()
def xvfb(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An X server on this machine, cookie required; yields DISPLAY and XAUTHORITY."""
    if not (shutil.which("Xvfb") and shutil.which("xauth")):
        pytest.skip("Xvfb and xauth are needed (Debian: xvfb xauth)")
    cookie = secrets.token_hex(16)
    server_auth, client_auth = tmp_path / "server.xauth", tmp_path / "client.xauth"
    subprocess.run(["xauth", "-f", str(server_auth), "add", ":0", ".", cookie], check=True, capture_output=True)
    read, write = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write),
            "-auth",
            str(server_auth),
            "-nolisten",
            "tcp",
            "-screen",
            "0",
            "1234x567x24",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as f:
            number = f.readline().strip()
        assert number.isdigit(), "Xvfb did not start"
        subprocess.run(
            ["xauth", "-f", str(client_auth), "add", f":{number}", ".", cookie], check=True, capture_output=True
        )
        yield {**os.environ, "DISPLAY": f":{number}", "XAUTHORITY": str(client_auth)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_x11_forwarding_reaches_the_x_server_on_the_client(
    dev: Dev, container: Container, xvfb: dict[str, str]
) -> None:
    r = _ssh(dev, container, "python3", "-", options=("-X",), env=xvfb, stdin=X_CLIENT.read_text())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake authentication" not in r.stderr
    # The reply comes from this machine's Xvfb: its vendor and the screen size it was given.
    assert r.stdout.strip() == "X11 OK: The X.Org Foundation 1234x567", r.stdout
    # Without the cookie the X server refuses: the forwarding carries real authentication.
    r = _ssh(dev, container, "python3", "-", "--no-cookie", options=("-X",), env=xvfb, stdin=X_CLIENT.read_text())
    assert r.returncode == 1 and "X11 refused" in r.stdout, r.stdout + r.stderr


def test_forge_migrate_runs_the_image_and_ssh_gets_in(dev: Dev, tmp_path: Path) -> None:
    """Launched by forge itself: `forge migrate` (GPU claim, data volume, -u UID:GID)."""
    env = f"devimg-{uuid.uuid4().hex[:6]}"
    r = _forge(dev.lab, "migrate", "--to", dev.host, "--env", env, "--image", dev.image, "--no-ssh-config", "--json")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout)
        assert result["host"] == dev.host and result["user"] == dev.lab.user
        # The host keys forge read over its verified connection are the ones ssh must see.
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(f"[{dev.address}]:{result['port']} {k}\n" for k in result["host_keys"]))
        c = Container(result["container"], int(result["port"]), known_hosts)
        r = _ssh(
            dev,
            c,
            "sh",
            "-c",
            'id -u; printf "%s\\n" "$NVIDIA_VISIBLE_DEVICES"; cat "$1"/"$2"',
            "sh",
            "/data",
            DATA_MARKER,
        )
        assert r.returncode == 0, r.stderr
        uid, gpus, data = r.stdout.split("\n", 2)
        assert uid == str(dev.uid)
        assert gpus == ",".join(result["gpus"]) and gpus
        assert data == DATA_MARKER_CONTENT
    finally:
        _forge(dev.lab, "stop", env, timeout=300)

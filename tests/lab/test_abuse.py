"""Another user of the GPU hosts, in the docker group as on a shared server, tries what issue
11 found: planted labels, names, ports and users in `docker ps`; reading or writing through
another user's data mount; squatting a port. Everything forge reads from a host is untrusted:
checked before it reaches a local command line, a file path, the terminal or another host."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.env import volume
from forge.env.launch import host_facts
from forge.fleet import Pool
from forge.lab import DATA_MARKER
from tests.conftest import LabHandle
from tests.lab.envkit import IMAGE, forge, migrate, new_env

pytestmark = pytest.mark.lab


def _plant(lab: LabHandle, host: str, *labels: str, name: str | None = None) -> str:
    """A container of the other user's, with these labels, on ``host``."""
    argv = ["run", "-d", "--name", name or f"planted-{uuid.uuid4().hex[:8]}"]
    for label in labels:
        argv += ["--label", label]
    r = lab.docker_as_other(host, *argv, IMAGE, "sleep", "600")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_a_planted_environment_never_puts_its_labels_on_ssh_s_command_line(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 11 #3: forge.user=-oProxyCommand=... ran a command on the client."""
    inv, env = env_lab["inventory"], new_env(env_lab)
    pwned = tmp_path / "pwned"
    cid = _plant(
        lab,
        "gpu1",
        f"forge.env={env}",
        f"forge.owner={lab.user}",
        f"forge.user=-oProxyCommand=touch {pwned}",
        "forge.ssh_port=22",  # the host's own sshd
    )
    try:
        r = forge(inv, "ssh", env, "--", "true", timeout=120)
        assert r.returncode != 0 and not pwned.exists(), r.stderr
        assert "publishes no SSH port" in r.stderr  # it publishes none: forge asks docker, not the label
    finally:
        lab.docker("gpu1", "rm", "-f", cid)


def test_a_container_answering_for_a_stopped_environment_is_refused(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    """The environment was started (its keys pinned), then removed; another user starts a
    container with its labels and an sshd of its own: forge ssh refuses its key."""
    inv, env = env_lab["inventory"], new_env(env_lab)
    migrate(inv, env, "--to", "gpu2")
    assert forge(inv, "stop", env, "--keep-ssh-config").returncode == 0
    port = "2290"
    r = lab.docker_as_other(
        "gpu2", "run", "-d", "-p", f"{port}:22", "--label", f"forge.env={env}", "--label", f"forge.owner={lab.user}",
        "--label", f"forge.user={lab.user}", "--label", f"forge.ssh_port={port}", "-e", f"FORGE_USER={lab.user}",
        "-e", "FORGE_UID=1000", "-e", "FORGE_GID=1000", "-e", "FORGE_AUTHORIZED_KEYS=", IMAGE,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip().splitlines()[-1]
    try:
        r = forge(inv, "ssh", env, "--", "true", timeout=180)
        assert r.returncode != 0 and "not the one pinned" in r.stderr, r.stderr
    finally:
        lab.docker("gpu2", "rm", "-f", cid)


def test_names_and_labels_cannot_drive_the_terminal(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    """Issue 11 #6: escape sequences from docker ps reached the terminal."""
    inv = env_lab["inventory"]
    evil = "dev\x1b]0;owned\x07\x1b[2J"
    cid = _plant(lab, "gpu3", f"forge.env={evil}", "forge.owner=mallory", "forge.gpus=\x1b[31mGPU-x")
    try:
        for args in (("ps",), ("gpus", "gpu3"), ("ps", "--json")):
            r = forge(inv, *args)
            assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout, args
        envs = json.loads(forge(inv, "ps", "--json").stdout)["environments"]
        assert any(e["env"] == evil for e in envs)  # shown, as data: JSON escapes it
    finally:
        lab.docker("gpu3", "rm", "-f", cid)


def test_a_squatted_port_is_passed_over(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    inv, env = env_lab["inventory"], new_env(env_lab)
    squat = []
    for port in ("2200", "2201", "2202"):
        r = lab.docker_as_other("gpu1", "run", "-d", "-p", f"{port}:22", IMAGE, "sleep", "600")
        assert r.returncode == 0, r.stderr
        squat.append(r.stdout.strip().splitlines()[-1])
    try:
        res = migrate(inv, env, "--to", "gpu1")
        assert res["port"] not in (2200, 2201, 2202)
        r = forge(inv, "ssh", env, "--", "hostname")
        assert r.returncode == 0 and r.stdout.strip() == env, r.stderr
    finally:
        forge(inv, "stop", env)
        lab.docker("gpu1", "rm", "-f", *squat)


def test_the_other_user_cannot_read_or_write_through_the_data_mount(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    """Issue 11 #4, as the other user of the host (not a stand-in)."""
    inv = inventory.load_file(env_lab["inventory"])
    host = inv.host("gpu1")
    secret = lab.lab.config.data_dir / f"secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("mine only\n")
    import subprocess

    subprocess.run(["chown", f"{lab.user}:{lab.user}", str(secret)], check=True)
    secret.chmod(0o600)
    with Pool() as pool:
        t = pool.get(host)
        facts = host_facts(t)
        spec = volume.spec_for(inv.data, host_name=host.name, user=facts.user, home=facts.home)
        kw = {"check_image": IMAGE, "uid": facts.uid, "gid": facts.gid, "marker": DATA_MARKER}
        try:
            volume.ensure(t, spec, **kw)  # type: ignore[arg-type]
            mnt = str(spec.mountpoint)
            r = lab.ssh_as_other("gpu1", "cat", f"{mnt}/{secret.name}")
            assert r.returncode != 0 and "Permission denied" in r.stderr, r
            r = lab.ssh_as_other("gpu1", "touch", f"{mnt}/planted")
            assert r.returncode != 0 and not (lab.lab.config.data_dir / "planted").exists(), r
        finally:
            volume.drop(t, spec)
            secret.unlink()

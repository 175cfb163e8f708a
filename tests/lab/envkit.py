"""The environments kit of the lab tests: a dev-like image (sshd on port 22 as the container's
user) built on gpu1..gpu3, an inventory that runs it, and forge run with a home of the tests'
own. The `env_lab` fixture (tests/lab/conftest.py) builds and cleans up with :func:`setup` and
:func:`teardown`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.env import volume
from forge.env.launch import host_facts
from forge.fleet import Pool
from forge.lab import DATA_MARKER
from tests.conftest import LabHandle

#: forge as started from a terminal, where Ctrl-C interrupts. A test run started in the
#: background (as CI may start it) has SIGINT ignored, as every background job of a
#: non-interactive shell has, and forge rightly keeps what it inherits: a sync then ran to
#: its end and exited 0 (seen once in CI).
AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'forge'; runpy.run_module('forge', run_name='__main__', alter_sys=True)"
)


def forge_from_a_terminal(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``forge ARGS`` in a process group of its own, as a terminal's Ctrl-C reaches it
    (``os.killpg(proc.pid, SIGINT)``); output captured as text."""
    return subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


IMAGE = "forge-test/env:lab"  # starts sshd on port 22 as the container's user
EXITS = "forge-test/env-exits:lab"  # its command exits at once
HOSTS = ("gpu1", "gpu2", "gpu3")
ASSETS = Path(__file__).parent / "assets" / "env-image"
HOME = Path(tempfile.mkdtemp(prefix="forge-test-home-"))


def _inventory(lab: LabHandle, path: Path, *, data_path: str | None = None, volume_name: str | None = None) -> Path:
    text = lab.inventory_path.read_text()
    text = text.replace("[data]\n", f'[data]\nmarker = "{DATA_MARKER}"\n', 1)
    text = text.replace('image = "forge-lab/debian:bookworm"', f'image = "{IMAGE}"')
    if data_path:
        text = text.replace(f'path = "{lab.lab.config.data_dir}"', f'path = "{data_path}"')
    if volume_name:
        text = text.replace("[data]\n", f'[data]\nvolume = "{volume_name}"\n', 1)
    path.write_text(text)
    return path


def forge(inv: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # forge pins each environment's keys in ~/.ssh/forge_known_hosts: a home of the tests' own
    env = {**os.environ, "HOME": str(HOME)}
    return subprocess.run(
        [sys.executable, "-m", "forge", "-i", str(inv), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def migrate(inv: Path, env: str, *args: str) -> dict[str, Any]:
    r = forge(inv, "migrate", "--env", env, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def new_env(env_lab: dict[str, Any]) -> str:
    name = f"t{uuid.uuid4().hex[:8]}"
    env_lab["envs"].append(name)
    return name


def envs_on(lab: LabHandle, host: str, env: str) -> list[str]:
    return lab.docker(host, "ps", "-aq", "--filter", f"label=forge.env={env}").stdout.split()


def claims_on(lab: LabHandle, host: str, env: str) -> list[str]:
    return lab.docker(host, "ps", "-aq", "--filter", f"label=forge.claim.env={env}").stdout.split()


def ssh_into(lab: LabHandle, res: dict[str, Any], tmp: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """ssh to the container, checking its host key against what forge read on its host."""
    known = tmp / f"known-{res['port']}"
    # named as the lab's ssh reaches the host: its address (behind a bastion, the inner one)
    known.write_text("".join(f"[{lab.address(res['host'])}]:{res['port']} {k}\n" for k in res["host_keys"]))
    # The lab's ssh command line to the container's host; ssh checks a key in the global
    # known_hosts file too (the user one, the lab's, has the hosts' port 22 only).
    options = ("-p", str(res["port"]), "-o", f"GlobalKnownHostsFile={known}")
    argv = lab.lab.ssh_argv(res["host"], *command, options=options)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def lab_gpu(lab: LabHandle, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`forge lab gpu HOST ARGS` on the session's lab, as a user would run it."""
    root = str(lab.lab.config.root)
    return subprocess.run(
        [sys.executable, "-m", "forge", "lab", "gpu", "--root", root, host, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def env_lab_kit(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The environments of one test module: built, yielded, then removed."""
    for h in HOSTS:
        lab.load_base_image(h)
        r = lab.docker(h, "build", "-q", "-t", IMAGE, str(ASSETS))
        assert r.returncode == 0, r.stderr
    exits = tmp_path_factory.mktemp("exits")
    (exits / "Dockerfile").write_text(f'FROM {IMAGE}\nCMD ["false"]\n')
    assert lab.docker("gpu2", "build", "-q", "-t", EXITS, str(exits)).returncode == 0
    inv_path = _inventory(lab, tmp_path_factory.mktemp("inv") / "hosts.toml")
    envs: list[str] = []
    yield {"inventory": inv_path, "envs": envs}
    for h in HOSTS:
        for env in envs:
            ids = lab.docker(h, "ps", "-aq", "--filter", f"label=forge.env={env}").stdout.split()
            ids += lab.docker(h, "ps", "-aq", "--filter", f"label=forge.claim.env={env}").stdout.split()
            if ids:
                lab.docker(h, "rm", "-f", *ids)
        for img in lab.docker(h, "images", "-q", "--filter", "reference=forge-keep/*").stdout.split():
            lab.docker(h, "rmi", "-f", img)
    inv = inventory.load_file(inv_path)
    with Pool() as pool:
        for h in HOSTS:
            host = inv.host(h)
            t = pool.get(host)
            facts = host_facts(t)
            volume.drop(t, volume.spec_for(inv.data, host_name=h, user=facts.user, home=facts.home))

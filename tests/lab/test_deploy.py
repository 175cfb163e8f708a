"""`invoke deploy` end to end against the lab: forge build -> forge sync -> forge migrate --to idle,
then `forge ssh` into the environment it started, and `forge stop`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from forge.lab import DATA_MARKER, DATA_MARKER_CONTENT
from forge.lab.toolchain import load_toolchain_image
from tests.conftest import LabHandle

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]


def test_invoke_deploy_end_to_end(lab: LabHandle, tmp_path: Path) -> None:
    env = f"deploy{uuid.uuid4().hex[:6]}"
    tag = f"forge-test/deploy:{env}"
    build_host = lab.hosts[0]
    base = lab.load_base_image(build_host)
    toolchain = load_toolchain_image(lab.lab, build_host)
    inv = tmp_path / "hosts.toml"
    inv.write_text(lab.inventory_path.read_text().replace('name = "dev"', f'name = "{env}"', 1))
    home = tmp_path / "home"
    home.mkdir()
    run_env = {**os.environ, "HOME": str(home)}
    forge = [sys.executable, "-m", "forge", "-i", str(inv)]
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "invoke",
                "deploy",
                "--inventory",
                str(inv),
                "--tag",
                tag,
                "--build-host",
                build_host,
                "--base",
                base,
                "--toolchain",
                toolchain,
                "--no-packages",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1200,
            env=run_env,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        # Every host got the image (sync), and the environment runs on one of them.
        # (by its layers and creation time: the ID differs between image stores)
        fmt = "{{json .RootFS.Layers}} {{.Created}}"
        ids = {h: lab.docker(h, "image", "inspect", "-f", fmt, tag).stdout.strip() for h in lab.hosts}
        assert len(set(ids.values())) == 1 and all(ids.values()), ids
        ps = subprocess.run([*forge, "ps", "--json"], capture_output=True, text=True, timeout=120, env=run_env)
        (mine,) = [e for e in json.loads(ps.stdout)["environments"] if e["env"] == env]
        assert mine["image"] == tag
        # forge ssh gets in as the user, with the data volume mounted.
        who = subprocess.run(
            [*forge, "ssh", env, "sh", "-c", f"id -un; cat /data/{DATA_MARKER}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=run_env,
        )
        assert who.returncode == 0, who.stderr
        assert who.stdout == f"{lab.user}\n{DATA_MARKER_CONTENT}"
    finally:
        subprocess.run([*forge, "stop", env], capture_output=True, text=True, timeout=300, env=run_env)
        for h in lab.hosts:
            lab.docker(h, "rmi", "-f", tag)
    ps = subprocess.run([*forge, "ps", "--json"], capture_output=True, text=True, timeout=120, env=run_env)
    assert [e for e in json.loads(ps.stdout)["environments"] if e["env"] == env] == []

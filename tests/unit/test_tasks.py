"""tasks.py: every task is listed with its description, and deploy chains build, sync, migrate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_invoke_list_shows_every_task_with_its_description() -> None:
    r = invoke("--list")
    assert r.returncode == 0, r.stderr
    listed = {}
    for line in r.stdout.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name, _, text = line.strip().partition(" ")
            listed[name] = text.strip()
    assert set(listed) == {"deploy", "sync", "test", "lint", "bench", "lab-up", "lab-down"}
    assert all(listed.values()), listed
    assert listed["deploy"].startswith("Build the dev image, sync it to every host")


def test_deploy_runs_build_then_sync_then_migrate_to_idle() -> None:
    r = invoke(
        "--dry",
        "deploy",
        "--inventory",
        "lab.toml",
        "--tag",
        "forge/dev:lab",
        "--build-host",
        "gpu1",
        "--base",
        "forge-lab/debian:bookworm",
        "--no-packages",
        "--env",
        "my env",
        "--gpus",
        "2",
    )
    assert r.returncode == 0, r.stderr
    lines = [line.replace("\x1b[1;37m", "").replace("\x1b[0m", "") for line in r.stdout.splitlines()]
    forge = f"{sys.executable} -m forge -i lab.toml"
    assert lines == [
        f"{forge} build --quiet --host gpu1 --tag forge/dev:lab --base forge-lab/debian:bookworm --no-packages",
        f"{forge} sync --quiet --from gpu1 forge/dev:lab",
        f"{forge} migrate --to idle --ssh-config --image forge/dev:lab --env 'my env' --gpus 2 --image-from gpu1",
    ]


def test_deploy_with_defaults_uses_the_inventory() -> None:
    r = invoke("--dry", "deploy", "--no-ssh-config")
    assert r.returncode == 0, r.stderr
    lines = [line.replace("\x1b[1;37m", "").replace("\x1b[0m", "") for line in r.stdout.splitlines()]
    assert [line.split(" -m forge ")[1] for line in lines] == [
        "build --quiet",
        "sync --quiet",
        "migrate --to idle --no-ssh-config",
    ]


def test_the_bastion_pass_runs_the_lab_tests_behind_a_jump_host() -> None:
    r = invoke("--dry", "test", "--bastion", "-k", "sync")
    assert r.returncode == 0, r.stderr
    (line,) = [x.replace("\x1b[1;37m", "").replace("\x1b[0m", "") for x in r.stdout.splitlines()]
    assert line == f"env FORGE_LAB_BASTION=1 {sys.executable} -m pytest -q -ra -m lab -k sync"
    both = invoke("--dry", "test", "--bastion", "--unit")
    assert both.returncode != 0 and "exclude each other" in both.stderr

"""`forge reclaim` on the lab: idle environments warned, then stopped with nothing lost, and
brought back by `forge migrate`. Real sshd and dockerd; the GPUs' state set with `forge lab gpu`.

Durations are seconds ([policy] idle_after = reclaim_after = 2s); a test waits past them on the
hosts' clocks before looking again, so no outcome depends on how fast the machine is.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.env import idle
from forge.env import reclaim as rec
from forge.fleet import Pool
from forge.progress import NoProgress
from tests.conftest import LabHandle
from tests.lab.envkit import claims_on, envs_on, forge, lab_gpu, migrate, new_env, ssh_into

pytestmark = pytest.mark.lab

HOST = "gpu3"
STEP = 2.5  # seconds: past idle_after and reclaim_after (2s) on any clock


@pytest.fixture()
def policy(env_lab: dict[str, Any], tmp_path: Path, lab: LabHandle) -> Iterator[Path]:
    """The kit's inventory with reclaiming on (2s, 2s) and a notify command that appends each
    event to ``tmp_path/events``; the marks left on the hosts are removed afterwards."""
    inv = tmp_path / "hosts.toml"
    notify = f'printf "%s %s %s %s\\n" "$FORGE_EVENT" "$FORGE_ENV" "$FORGE_HOST" "$FORGE_IMAGE" >> {tmp_path}/events'
    extra = f'\n[policy]\nidle_after = "2s"\nreclaim_after = "2s"\n[notify]\ncommand = {json.dumps(notify)}\n'
    inv.write_text(Path(env_lab["inventory"]).read_text() + extra)
    yield inv
    for h in ("gpu1", "gpu2", "gpu3"):
        marks = lab.docker(h, "volume", "ls", "-q", "--filter", "label=forge.idle").stdout.split()
        if marks:
            lab.docker(h, "volume", "rm", "-f", *marks)
        lab.lab.reset_gpus(h)


def reclaim(inv: Path, *args: str) -> dict[str, Any]:
    r = forge(inv, "reclaim", HOST, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def seen(out: dict[str, Any], env: str) -> dict[str, Any]:
    (e,) = [e for e in out["environments"] if e["env"] == env]
    return e


def with_a_file(lab: LabHandle, env_lab: dict[str, Any], inv: Path, tmp: Path, text: str) -> tuple[str, dict[str, Any]]:
    """A new environment on HOST whose user wrote ``text`` to ~/work.txt."""
    env = new_env(env_lab)
    res = migrate(inv, env, "--to", HOST)
    assert ssh_into(lab, res, tmp, "sh", "-c", f"echo {text} > ~/work.txt").returncode == 0
    return env, res


def until_reclaimed(inv: Path, env: str) -> dict[str, Any]:
    """Looks, past idle_after and reclaim_after, until ``env`` is reclaimed; its last look."""
    for _ in range(3):
        reclaim(inv)
        time.sleep(STEP)
    done = seen(reclaim(inv), env)
    assert done["action"] == "reclaimed" and done["image"], done
    return done


def state_of(lab: LabHandle, env: str) -> str:
    (cid,) = envs_on(lab, HOST, env)
    return lab.docker(HOST, "inspect", "-f", "{{.State.Status}} {{.HostConfig.RestartPolicy.Name}}", cid).stdout.strip()


def test_an_idle_environment_is_warned_then_reclaimed_and_migrate_brings_it_back_with_its_changes(
    lab: LabHandle, env_lab: dict[str, Any], policy: Path, tmp_path: Path
) -> None:
    env, first = with_a_file(lab, env_lab, policy, tmp_path, "mine")
    # a terminal open in the environment without SSH (as a detached tmux would hold)
    (cid,) = envs_on(lab, HOST, env)
    terminal = subprocess.Popen(
        ["docker", "-H", lab.lab.config.docker_host(HOST), "exec", "-t", cid, "sleep", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        dry = reclaim(policy, "--dry-run")
        assert seen(dry, env)["action"] == "start", json.dumps(seen(dry, env))
        assert "forge-idle" not in lab.docker(HOST, "volume", "ls", "-q").stdout  # --dry-run: nothing written
        assert seen(reclaim(policy), env)["action"] == "start"
        time.sleep(STEP)
        warned = seen(reclaim(policy), env)
        assert (warned["action"], warned["reclaim_in_s"]) == ("warn", 2), warned
        assert warned["idle_s"] >= 2
    finally:
        terminal.kill()
    shown = terminal.communicate(timeout=30)[0]
    assert f"forge: environment {env} on {HOST} has been idle for" in shown, shown
    login = ssh_into(lab, first, tmp_path, "bash", "-lc", "true")  # a login shows it (and is a session)
    assert f"`forge migrate --env {env}` brings it back" in login.stdout, login
    ps = json.loads(forge(policy, "ps", HOST, "--json").stdout)
    (listed,) = [e for e in ps["environments"] if e["env"] == env]
    assert listed["warned"] and not listed["reclaimed"]

    time.sleep(STEP)
    done = seen(reclaim(policy), env)
    assert done["action"] == "reclaim" and done["image"].startswith(f"forge-keep/{lab.user}-{env}:reclaimed-"), done
    assert state_of(lab, env) == "exited no" and claims_on(lab, HOST, env) == []
    events = [e for e in (tmp_path / "events").read_text().splitlines() if f" {env} " in e]
    assert events == [
        f"launched {env} {HOST} ", f"reclaim_warning {env} {HOST} ", f"reclaimed {env} {HOST} {done['image']}"
    ]  # fmt: skip
    assert seen(reclaim(policy), env)["action"] == "reclaimed"  # stays so: nothing more is done
    gpus = json.loads(forge(policy, "gpus", HOST, "--json").stdout)["hosts"][0]["gpus"]
    assert [g["free"] for g in gpus if g["index"] in first["gpu_indexes"]] == [True], gpus  # its GPU is free again

    back = migrate(policy, env, "--to", HOST)
    assert ssh_into(lab, back, tmp_path, "cat", "work.txt").stdout == "mine\n"
    ps = json.loads(forge(policy, "ps", "--json").stdout)["environments"]
    assert [(e["host"], e["state"]) for e in ps if e["env"] == env] == [(HOST, "running")]  # the old one is gone
    assert lab.docker(HOST, "images", "-q", done["image"]).stdout.strip() == ""  # its image went with it
    assert lab.docker(HOST, "volume", "ls", "-q", "--filter", f"label=forge.idle.env={env}").stdout.strip() == ""


def test_gpu_work_or_an_open_ssh_session_keeps_it_and_starts_the_count_over(
    lab: LabHandle, env_lab: dict[str, Any], policy: Path, tmp_path: Path
) -> None:
    env = new_env(env_lab)
    res = migrate(policy, env, "--to", HOST)
    assert seen(reclaim(policy), env)["action"] == "start"
    (index,) = res["gpu_indexes"]
    lab.lab.load_gpus(HOST, [index], utilization_pct=60, memory_used_mib=20000)
    time.sleep(STEP)
    busy = seen(reclaim(policy), env)
    assert (busy["action"], busy["busy"], busy["idle_s"]) == ("busy", f"GPU {index} at 60% utilization", None)
    lab.lab.reset_gpus(HOST)
    assert seen(reclaim(policy), env)["action"] == "start"  # the count starts over
    session = subprocess.Popen(
        ["sh", "-c", "exec \"$@\"", "sh", *_ssh_argv(lab, res, tmp_path, "sleep", "60")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(STEP)
        kept = seen(reclaim(policy), env)
        assert (kept["action"], kept["busy"]) == ("busy", "1 SSH session(s) open"), kept
    finally:
        session.kill()
        session.wait()
    assert state_of(lab, env) == "running always"


def _ssh_argv(lab: LabHandle, res: dict[str, Any], tmp: Path, *command: str) -> list[str]:
    known = tmp / f"known-{res['port']}"
    known.write_text("".join(f"[{lab.address(res['host'])}]:{res['port']} {k}\n" for k in res["host_keys"]))
    options = ("-p", str(res["port"]), "-o", f"GlobalKnownHostsFile={known}")
    return lab.lab.ssh_argv(res["host"], *command, options=options)


class CtrlC(NoProgress):
    """A reclaim's progress that presses Ctrl-C when it hears its ``n``-th note."""

    def __init__(self, n: int) -> None:
        self.n, self.heard = n, 0

    def note(self, message: str) -> None:
        self.heard += 1
        if self.heard == self.n:
            raise KeyboardInterrupt


def test_a_reclaim_interrupted_at_each_step_leaves_it_running_or_fully_recoverable(
    lab: LabHandle, env_lab: dict[str, Any], policy: Path, tmp_path: Path
) -> None:
    """Ctrl-C before the commit, the restart policy, the stop, the release and the mark (the
    reclaim's five notes): the environment keeps running, or it is stopped with its changes
    kept; the next run finishes the job and migrate brings back what the user wrote."""
    inv = inventory.load_file(policy)
    rule = idle.rule_of(inv.policy)
    for step in range(1, 6):
        env, _ = with_a_file(lab, env_lab, policy, tmp_path, f"step{step}")
        assert seen(reclaim(policy), env)["action"] == "start"
        time.sleep(STEP)
        assert seen(reclaim(policy), env)["action"] == "warn"
        time.sleep(STEP)
        with Pool() as pool, pytest.raises(KeyboardInterrupt):
            rec.reclaim([inv.host(HOST)], rule, pool, progress=CtrlC(step))
        state = state_of(lab, env)
        if step <= 3:  # before the stop: it runs as it did (at most a commit made, no restart policy)
            assert state.startswith("running"), (step, state)
        else:
            assert state == "exited no", (step, state)
        again = seen(reclaim(policy), env)
        assert again["action"] in ("reclaim", "finish") and again["image"], (step, again)
        assert state_of(lab, env) == "exited no" and claims_on(lab, HOST, env) == []
        back = migrate(policy, env, "--to", HOST)
        assert ssh_into(lab, back, tmp_path, "cat", "work.txt").stdout == f"step{step}\n", step
        assert forge(policy, "stop", env, "--keep-ssh-config").returncode == 0


def test_a_reclaimed_environment_whose_container_was_removed_comes_back_from_its_image(
    lab: LabHandle, env_lab: dict[str, Any], policy: Path, tmp_path: Path
) -> None:
    env, _ = with_a_file(lab, env_lab, policy, tmp_path, "kept")
    until_reclaimed(policy, env)
    lab.docker(HOST, "container", "prune", "-f")  # someone cleans up stopped containers
    assert envs_on(lab, HOST, env) == []
    back = migrate(policy, env)
    assert ssh_into(lab, back, tmp_path, "cat", "work.txt").stdout == "kept\n"


def test_stopping_a_reclaimed_environment_removes_its_image_and_marks(
    lab: LabHandle, env_lab: dict[str, Any], policy: Path
) -> None:
    env = new_env(env_lab)
    migrate(policy, env, "--to", HOST)
    done = until_reclaimed(policy, env)
    assert forge(policy, "stop", env, "--keep-ssh-config").returncode == 0
    assert lab.docker(HOST, "images", "-q", done["image"]).stdout.strip() == ""
    assert lab.docker(HOST, "volume", "ls", "-q", "--filter", f"label=forge.idle.env={env}").stdout.strip() == ""
    assert envs_on(lab, HOST, env) == []


def test_processes_outside_forge_on_gpus_showing_no_work_are_reported_by_user_never_touched(
    lab: LabHandle, policy: Path
) -> None:
    held = lab_gpu(lab, HOST, "--busy", "2", "--user", "nobody", "--util", "0", "--memory", "9000")
    assert held.returncode == 0, held.stderr
    first = reclaim(policy)["outside"]
    assert [(o["user"], o["gpu"], o["memory_mib"], o["idle_s"]) for o in first] == [("nobody", "2", 9000, 0)]
    time.sleep(STEP)
    (later,) = reclaim(policy)["outside"]
    assert later["idle_s"] >= 2 and later["pid"] == first[0]["pid"]
    assert subprocess.run(["kill", "-0", str(later["pid"])]).returncode == 0  # still there

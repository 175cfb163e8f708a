"""`forge migrate` / `ps` / `stop` and the data volume on the lab: real sshd and dockerd, no mocks.

Each test uses its own environment name; everything created is removed at the end. gpu4 is
left to other tests (its state is scripted by test_gpus).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from forge import inventory, shell
from forge.env import quota, volume
from forge.env.launch import host_facts
from forge.fleet import Pool
from forge.inventory import Host
from forge.lab import DATA_MARKER, DATA_MARKER_CONTENT
from forge.transport import Transport, connect
from tests.conftest import LabHandle
from tests.lab.envkit import (
    EXITS,
    HOME,
    HOSTS,
    IMAGE,
    _inventory,
    claims_on,
    envs_on,
    forge,
    forge_from_a_terminal,
    migrate,
    new_env,
    ssh_into,
)


class Through(Transport):
    """A real connection to a lab host (what the pool would open) that a test watches or
    changes command by command in ``run``; everything else goes to it as is."""

    def __init__(self, host: Host) -> None:
        self.inner: Transport = connect(host)
        self.name = self.inner.name

    def run(self, command: Any, **kw: Any) -> Any:
        return self.inner.run(command, **kw)

    def stream(self, command: Any, **kw: Any) -> Any:
        return self.inner.stream(command, **kw)

    def host_key(self) -> tuple[str, str] | None:
        return self.inner.host_key()

    def close(self) -> None:
        self.inner.close()

    def end(self) -> None:
        self.inner.end()


pytestmark = pytest.mark.lab


def test_migrate_to_the_idle_host(lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path) -> None:
    inv, env = env_lab["inventory"], new_env(env_lab)
    first = migrate(inv, env, "--to", "gpu1")
    assert first["host"] == "gpu1" and first["old_host"] is None
    jump = f"-J {lab.user}@{lab.lab.config.jump_host().address}:22 " if lab.bastion else ""
    assert first["ssh"] == f"ssh -X -o ForwardX11Trusted=no {jump}-p {first['port']} {lab.user}@{lab.address('gpu1')}"
    moved = migrate(inv, env, "--to", "idle", "--among", "gpu1,gpu2")
    assert moved["host"] == "gpu2" and moved["old_host"] == "gpu1"  # idle never picks the current host
    assert envs_on(lab, "gpu1", env) == [] and claims_on(lab, "gpu1", env) == []
    assert len(envs_on(lab, "gpu2", env)) == 1 and len(claims_on(lab, "gpu2", env)) == 1
    # The data host's files are visible inside, and sshd answers as the user's uid.
    r = ssh_into(lab, moved, tmp_path, "sh", "-c", f"id -u; id -g; cat /data/{DATA_MARKER}; hostname")
    assert r.returncode == 0, r.stderr
    uid = subprocess.run(["id", "-u", lab.user], capture_output=True, text=True).stdout.strip()
    gid = subprocess.run(["id", "-g", lab.user], capture_output=True, text=True).stdout.strip()
    assert r.stdout == f"{uid}\n{gid}\n{DATA_MARKER_CONTENT}{env}\n"
    # The container got the options people type by hand.
    name = moved["container"]
    fmt = (
        "{{.HostConfig.IpcMode}} {{.HostConfig.RestartPolicy.Name}} {{.Config.User}} {{.Config.Tty}} "
        "{{json .HostConfig.DeviceRequests}}"
    )
    out = lab.docker("gpu2", "inspect", "-f", fmt, name).stdout
    assert out.startswith(f"host always {uid}:{gid} true ")
    assert json.loads(out.split(" ", 4)[4])[0]["DeviceIDs"] == moved["gpus"]
    # forge ps shows it; forge stop removes it and its claim.
    ps = json.loads(forge(inv, "ps", "--json", "gpu1", "gpu2").stdout)
    mine = [e for e in ps["environments"] if e["env"] == env]
    assert [(e["host"], e["port"], e["gpus"]) for e in mine] == [("gpu2", moved["port"], moved["gpus"])]
    assert forge(inv, "stop", env, "--keep-ssh-config").returncode == 0
    assert envs_on(lab, "gpu2", env) == [] and claims_on(lab, "gpu2", env) == []


def test_concurrent_migrates_get_different_gpus(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    inv = env_lab["inventory"]
    names = [new_env(env_lab) for _ in range(3)]
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda n: migrate(inv, n, "--to", "gpu3"), names))
    gpus = [tuple(r["gpus"]) for r in results]
    assert len(set(gpus)) == len(names), gpus
    assert len({r["port"] for r in results}) == len(names)
    for n in names:
        assert forge(inv, "stop", n, "--keep-ssh-config").returncode == 0


def _old_still_runs(lab: LabHandle, first: dict[str, Any], env: str, tmp: Path) -> None:
    ids = envs_on(lab, first["host"], env)
    assert len(ids) == 1
    state = lab.docker(first["host"], "inspect", "-f", "{{.Name}} {{.State.Running}}", ids[0]).stdout.strip()
    assert state == f"/{first['container']} true"
    assert ssh_into(lab, first, tmp, "true").returncode == 0


def test_a_failure_at_each_step_leaves_the_old_environment_running(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path
) -> None:
    inv, env = env_lab["inventory"], new_env(env_lab)
    first = migrate(inv, env, "--to", "gpu1")
    # Image sync: an image that exists nowhere.
    r = forge(inv, "migrate", "--env", env, "--to", "gpu2", "--image", "forge-test/no-such-image:1")
    assert r.returncode != 0 and "step 'image'" in r.stderr, r.stderr
    _old_still_runs(lab, first, env, tmp_path)
    # Volume: the data host's directory does not exist.
    bad = _inventory(lab, tmp_path / "bad.toml", data_path="/nonexistent/forge-data", volume_name=f"forge-bad-{env}")
    r = forge(bad, "migrate", "--env", env, "--to", "gpu2")
    assert r.returncode != 0 and "step 'volume'" in r.stderr, r.stderr
    assert lab.docker("gpu2", "volume", "inspect", f"forge-bad-{env}-{lab.user}").returncode != 0
    _old_still_runs(lab, first, env, tmp_path)
    # Container start: an image whose command exits at once.
    r = forge(inv, "migrate", "--env", env, "--to", "gpu2", "--image", EXITS, "--image-from", "gpu2")
    assert r.returncode != 0 and "step 'container'" in r.stderr, r.stderr
    assert "still runs on gpu1" in r.stderr
    _old_still_runs(lab, first, env, tmp_path)
    # Nothing of the failed attempts is left on the target.
    assert envs_on(lab, "gpu2", env) == [] and claims_on(lab, "gpu2", env) == []
    assert forge(inv, "stop", env, "--keep-ssh-config").returncode == 0


def test_without_a_host_to_ship_from_migrate_takes_the_best_host_that_has_the_image(
    lab: LabHandle, env_lab: dict[str, Any]
) -> None:
    inv, env = env_lab["inventory"], new_env(env_lab)
    only = f"forge-test/only-one-host:{env}"
    r = forge(inv, "migrate", "--env", env, "--among", "gpu1,gpu3", "--image", only, "--no-ssh-config")
    assert r.returncode != 0 and "no candidate host (" in r.stderr and "--image-from" in r.stderr, r.stderr
    ranked = r.stderr.split("no candidate host (", 1)[1].split(")", 1)[0].split(", ")
    assert sorted(ranked) == ["gpu1", "gpu3"]
    last = ranked[-1]  # the image only on the host ranked last: the first one is passed over
    assert lab.docker(last, "tag", IMAGE, only).returncode == 0
    try:
        r = forge(inv, "migrate", "--env", env, "--among", "gpu1,gpu3", "--image", only, "--json", "--no-ssh-config")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["host"] == last
        assert envs_on(lab, ranked[0], env) == [] and claims_on(lab, ranked[0], env) == []
        assert forge(inv, "stop", env, "--keep-ssh-config").returncode == 0
    finally:
        lab.docker(last, "rmi", only)


def test_keep_changes_brings_what_was_installed_by_hand(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path
) -> None:
    inv, env = env_lab["inventory"], new_env(env_lab)
    first = migrate(inv, env, "--to", "gpu1")
    r = ssh_into(lab, first, tmp_path, "sh", "-c", f"echo installed-{env} > ~/by-hand.txt")
    assert r.returncode == 0, r.stderr
    moved = migrate(inv, env, "--to", "gpu2", "--keep-changes")
    assert moved["host"] == "gpu2" and moved["image"].startswith("forge-keep/")
    r = ssh_into(lab, moved, tmp_path, "cat", "by-hand.txt")
    assert r.returncode == 0 and r.stdout == f"installed-{env}\n", r.stderr
    # Only the committed top layer was new on gpu2: it had every other layer already.
    layers = lab.docker("gpu2", "image", "inspect", "-f", "{{len .RootFS.Layers}}", moved["image"]).stdout
    base = lab.docker("gpu2", "image", "inspect", "-f", "{{len .RootFS.Layers}}", IMAGE).stdout
    assert int(layers) == int(base) + 1
    # The committed image is gone from the old host.
    assert lab.docker("gpu1", "image", "inspect", moved["image"]).returncode != 0
    assert forge(inv, "stop", env, "--keep-ssh-config").returncode == 0


def test_keep_changes_twice_leaves_no_committed_image_behind(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    """Each --keep-changes hop retires the commit the old container ran; stop removes the last."""
    inv, env = env_lab["inventory"], new_env(env_lab)

    def kept(host: str) -> list[str]:
        fmt = "{{.Repository}}:{{.Tag}}"
        out = lab.docker(host, "images", "--format", fmt, "--filter", "reference=forge-keep/*").stdout.split()
        return [i for i in out if i.endswith(f"-{env}:" + i.rsplit(":", 1)[-1])]

    migrate(inv, env, "--to", "gpu1")
    first = migrate(inv, env, "--to", "gpu2", "--keep-changes")
    assert kept("gpu1") == [] and kept("gpu2") == [first["image"]]
    second = migrate(inv, env, "--to", "gpu1", "--keep-changes")
    assert kept("gpu2") == []  # the first commit: its container is gone
    assert kept("gpu1") == [second["image"]]
    assert forge(inv, "stop", env, "--keep-ssh-config").returncode == 0
    assert kept("gpu1") == []


def test_migrate_lists_each_host_once_to_locate_and_choose(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    """The fleet is listed (date; docker ps) once for locate, choose and the port; the target
    is listed again only when another run's claim won a race (none here). The GPU probe sees
    claims too, and a claim is atomic."""
    from forge.env import envs
    from forge.env import migrate as mig
    from forge.env.listing import PS_FORMAT
    from forge.transport.base import to_script

    inv, env = inventory.load_file(env_lab["inventory"]), new_env(env_lab)
    listed: list[str] = []

    class Recording(Through):
        def run(self, command: Any, **kw: Any) -> Any:
            if shell.quote(PS_FORMAT) in to_script(command):
                listed.append(self.name)
            return self.inner.run(command, **kw)

    keys = (Path(str(lab.identity_file) + ".pub")).read_text()
    req = mig.request_from(inv, env=env, to="idle", among=HOSTS, authorized_keys=keys)
    with Pool(Recording) as pool:
        res = mig.migrate(inv, req, pool)
        try:
            others = [h.name for h in inv.hosts if h.name != res.host]
            assert sorted(listed) == sorted([*others, res.host]), listed
        finally:
            envs.stop(inv, env, pool)


def test_a_dead_mount_is_seen_and_remounted(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    inv = inventory.load_file(env_lab["inventory"])
    host = inv.host("gpu3")
    tag = uuid.uuid4().hex[:8]
    data = inventory.DataSettings(**{**vars(inv.data), "volume": f"forge-dead-{tag}"})
    with Pool() as pool:
        t = pool.get(host)
        facts = host_facts(t)
        spec = volume.spec_for(data, host_name=host.name, user=facts.user, home=facts.home)
        kw = {"check_image": IMAGE, "uid": facts.uid, "gid": facts.gid, "marker": DATA_MARKER}
        try:
            first = volume.ensure(t, spec, **kw)  # type: ignore[arg-type]
            assert (first.mount, first.created) == ("mounted", True)
            again = volume.ensure(t, spec, **kw)  # type: ignore[arg-type]
            assert (again.mount, again.created) == ("alive", False)
            # Kill this mount's sshfs (found by its mount point): the mount goes dead.
            ps = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
            pids = [
                int(line.split()[0])
                for line in ps.splitlines()
                if "sshfs" in line and line.rstrip().endswith(str(spec.mountpoint))
            ]
            assert len(pids) == 1, ps
            subprocess.run(["kill", "-9", str(pids[0])], check=True)
            r = lab.docker("gpu3", "run", "--rm", "-v", f"{spec.name}:/d", IMAGE, "ls", "/d")
            assert r.returncode != 0 and volume.DEAD_MOUNT in r.stderr
            fixed = volume.ensure(t, spec, **kw)  # type: ignore[arg-type]
            assert fixed.mount == "remounted"
            r = lab.docker("gpu3", "run", "--rm", "-v", f"{spec.name}:/d", IMAGE, "cat", f"/d/{DATA_MARKER}")
            assert r.returncode == 0 and r.stdout == DATA_MARKER_CONTENT
        finally:
            volume.drop(t, spec)


def test_forge_ssh_and_the_managed_ssh_config(lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path) -> None:
    """`forge ssh ENV CMD` logs in with the container's host key pinned; with --ssh-config,
    plain `ssh ENV` works through the managed block in ~/.ssh/config."""

    inv, env = env_lab["inventory"], new_env(env_lab)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    config = home / ".ssh" / "config"
    config.write_text("# the user's own settings\nHost example\n  User someone\n")
    run_env = {**os.environ, "HOME": str(home)}

    def forge_home(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forge", "-i", str(inv), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=run_env,
        )

    r = forge_home("migrate", "--env", env, "--to", "gpu3", "--ssh-config", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    uid = subprocess.run(["id", "-u", lab.user], capture_output=True, text=True).stdout.strip()

    r = forge_home("ssh", env, "id", "-u")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == uid

    # The managed block goes first (ssh takes the first value it finds, so a `Host *` of the
    # user's cannot override it); the user's own lines stay as they were, after it.
    text = config.read_text()
    assert text.endswith("# the user's own settings\nHost example\n  User someone\n")
    assert f"Host {env}" in text and str(res["port"]) in text
    r = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", env, "cat", f"/data/{DATA_MARKER}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=run_env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == DATA_MARKER_CONTENT
    assert "ForwardX11Trusted no" in text  # issue 11 #5: X11 forwarded untrusted

    # Issue 11 #9: a block forge manages follows its environment, without --ssh-config.
    r = forge_home("migrate", "--env", env, "--to", "gpu1", "--json")
    assert r.returncode == 0, r.stderr
    moved = json.loads(r.stdout)
    text = config.read_text()
    assert f"HostName {lab.address('gpu1')}" in text and f"Port {moved['port']}" in text
    assert text.count(f"Host {env}") == 1
    r = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", env, "hostname"],
        capture_output=True,
        text=True,
        timeout=60,
        env=run_env,
    )
    assert r.returncode == 0 and r.stdout.strip() == env, r.stderr

    assert forge_home("stop", env).returncode == 0
    assert config.read_text() == "# the user's own settings\nHost example\n  User someone\n"


def test_a_host_whose_docker_daemon_is_down_is_passed_over(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    """Issue 11 #10: one host's dead daemon failed `forge migrate --to idle` at step 'choose'
    for everyone, and messages quoted forge's internal command line, calling the host
    unreachable."""
    from tests.lab.conftest import docker_down

    inv, env = env_lab["inventory"], new_env(env_lab)
    with docker_down(lab, "gpu2"):
        res = migrate(inv, env, "--to", "idle", "--among", "gpu1,gpu2,gpu3")
        assert res["host"] in ("gpu1", "gpu3")
        r = forge(inv, "ps", "--json")
        assert r.returncode == 4, r.stderr
        assert json.loads(r.stdout)["unreachable"]["gpu2"] == "the Docker daemon is not running"
        table = forge(inv, "ps")
        assert "gpu2" in table.stdout and "sh -c" not in table.stdout and "unreachable" not in table.stdout
        r = forge(inv, "migrate", "--env", env, "--to", "gpu2")
        assert r.returncode != 0 and "gpu2: the Docker daemon is not running" in r.stderr, r.stderr
        assert len(r.stderr) < 400 and "sh -c" not in r.stderr
    assert forge(inv, "stop", env).returncode == 0


def test_another_local_user_cannot_read_or_write_through_the_data_mount(
    lab: LabHandle, env_lab: dict[str, Any]
) -> None:
    """Issue 11 #4: the sshfs mount had allow_other without default_permissions: another user
    of the GPU host read a 0600 file and wrote into the data host through it."""
    inv = inventory.load_file(env_lab["inventory"])
    host = inv.host("gpu1")
    secret = lab.lab.config.data_dir / f"secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("mine only\n")
    subprocess.run(["chown", f"{lab.user}:{lab.user}", str(secret)], check=True)
    secret.chmod(0o600)
    with Pool() as pool:
        t = pool.get(host)
        facts = host_facts(t)
        spec = volume.spec_for(inv.data, host_name=host.name, user=facts.user, home=facts.home)
        kw = {"check_image": IMAGE, "uid": facts.uid, "gid": facts.gid, "marker": DATA_MARKER}
        try:
            volume.ensure(t, spec, **kw)  # type: ignore[arg-type]
            mnt = Path(str(spec.mountpoint))
            # The GPU hosts share this machine's users and mounts: `nobody` is another local user.
            as_other = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            # the mount point may be reachable (a home of 0755); what is behind it is not
            r = subprocess.run([*as_other, "cat", str(mnt / secret.name)], capture_output=True, text=True)
            assert r.returncode != 0 and "Permission denied" in r.stderr, r
            r = subprocess.run([*as_other, "touch", str(mnt / "planted")], capture_output=True, text=True)
            assert r.returncode != 0, r
            assert not (lab.lab.config.data_dir / "planted").exists()
            # the owner, and its container (same uid), keep their access
            assert t.run(["cat", str(mnt / secret.name)], check=True).stdout == "mine only\n"
            r = lab.docker(
                "gpu1",
                "run",
                "--rm",
                "-u",
                f"{facts.uid}:{facts.gid}",
                "-v",
                f"{spec.name}:/d",
                IMAGE,
                "sh",
                "-c",
                f"cat /d/{secret.name} && touch /d/{secret.name}.w && rm /d/{secret.name}.w",
            )
            assert r.returncode == 0 and r.stdout == "mine only\n", r.stderr
        finally:
            volume.drop(t, spec)
            secret.unlink()


def test_an_image_that_runs_nothing_is_refused_with_what_to_do(lab: LabHandle, env_lab: dict[str, Any]) -> None:
    """Issue 11 #8: on a fresh lab, the inventory's bare base image failed at docker run with
    "No command specified"; forge now says what the image lacks and how to build one."""
    inv, env = env_lab["inventory"], new_env(env_lab)
    base = lab.load_base_image("gpu2")
    r = forge(inv, "migrate", "--env", env, "--to", "gpu2", "--image", base, "--image-from", "gpu2")
    assert r.returncode != 0
    assert "has no default command" in r.stderr and "forge build" in r.stderr, r.stderr
    assert "No command specified" not in r.stderr
    assert envs_on(lab, "gpu2", env) == [] and claims_on(lab, "gpu2", env) == []


def _with_quota(env_lab: dict[str, Any], tmp_path: Path, n: int) -> Path:
    """The kit's inventory with a fleet-wide quota of ``n`` GPUs per user, and a notify command
    that appends each event to ``tmp_path/events``."""
    inv = tmp_path / "hosts.toml"
    notify = f'printf "%s %s %s %s\\n" "$FORGE_EVENT" "$FORGE_ENV" "$FORGE_HOST" "$FORGE_OLD_HOST" >> {tmp_path}/events'
    extra = f"\n[policy]\nmax_gpus_per_user = {n}\n[notify]\ncommand = {json.dumps(notify)}\n"
    inv.write_text(Path(env_lab["inventory"]).read_text() + extra)
    return inv


def test_the_quota_refuses_a_second_environment_not_a_move_of_the_first(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 12: [policy] max_gpus_per_user, checked at claim time, naming what is held where."""
    inv = _with_quota(env_lab, tmp_path, 1)
    first, second = new_env(env_lab), new_env(env_lab)
    placed = migrate(inv, first, "--to", "gpu1")
    refused = forge(inv, "migrate", "--env", second, "--to", "gpu2")
    assert refused.returncode == 1
    user = lab.lab.config.user
    assert (
        f"migrate failed at step 'choose': {user} may hold 1 GPU(s) through forge and holds 1 "
        f"(1 on gpu1 for '{first}'): 1 more would be 2" in refused.stderr
    ), refused.stderr
    assert envs_on(lab, "gpu2", second) == [] and claims_on(lab, "gpu2", second) == []
    moved = migrate(inv, first, "--to", "gpu2")  # its own GPU is not counted: it is given back
    assert (moved["old_host"], moved["host"]) == (placed["host"], "gpu2")
    # [notify] heard of each launch, not of the refusal
    events = (tmp_path / "events").read_text().splitlines()
    assert events == [f"launched {first} gpu1 ", f"launched {first} gpu2 gpu1"]
    assert forge(inv, "stop", first, "--keep-ssh-config").returncode == 0


def test_two_runs_racing_for_the_last_gpu_of_the_quota_exactly_one_gets_it(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path
) -> None:
    inv = _with_quota(env_lab, tmp_path, 1)
    for _ in range(3):
        names = [new_env(env_lab), new_env(env_lab)]
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda a: forge(inv, "migrate", "--env", a[0], "--to", a[1], "--json"),
                                 zip(names, ("gpu2", "gpu3"), strict=True)))  # fmt: skip
        won = [n for n, r in zip(names, runs, strict=True) if r.returncode == 0]
        assert len(won) == 1, [r.stderr for r in runs]
        (lost,) = [r for r in runs if r.returncode != 0]
        assert "may hold 1 GPU(s) through forge" in lost.stderr, lost.stderr
        for n, host in zip(names, ("gpu2", "gpu3"), strict=True):  # the loser left nothing behind
            if n not in won:
                assert envs_on(lab, host, n) == [] and claims_on(lab, host, n) == []
        assert forge(inv, "stop", won[0], "--keep-ssh-config").returncode == 0


# ------------------------------------------------------------------ migrate --wait: the line


def _with_policy(env_lab: dict[str, Any], tmp_path: Path, policy: str) -> Path:
    inv = tmp_path / "hosts-policy.toml"
    inv.write_text(Path(env_lab["inventory"]).read_text() + f"\n[policy]\n{policy}\n")
    return inv


@pytest.fixture()
def busy(lab: LabHandle) -> Iterator[None]:
    """Every GPU of gpu1..gpu3 at work; their default state again afterwards."""
    try:
        for h in HOSTS:
            lab.lab.load_gpus(h, [0, 1, 2, 3], utilization_pct=90, memory_used_mib=40000)
        yield
    finally:
        for h in HOSTS:
            lab.lab.reset_gpus(h)


def tickets(lab: LabHandle, env: str) -> list[str]:
    """The ticket volumes of ``env`` on gpu1..gpu3."""
    out = []
    for h in HOSTS:
        out += lab.docker(h, "volume", "ls", "-q", "--filter", f"label=forge.wait.env={env}").stdout.split()
    return out


def waiter(inv: Path, env: str, *args: str) -> subprocess.Popen[str]:
    return forge_from_a_terminal(
        "-i", str(inv), "migrate", "--env", env, "--gpus", "2", "--among", ",".join(HOSTS), "--wait",
        "--wait-interval", "0.5", "--json", *args, env={"HOME": str(HOME)},
    )  # fmt: skip


def in_line(lab: LabHandle, env: str, proc: subprocess.Popen[str]) -> None:
    """Until ``env``'s waiter holds its place on each host."""
    deadline = time.monotonic() + 60
    while len(tickets(lab, env)) < len(HOSTS):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.2)


def _as_the_other_user(lab: LabHandle, inv: Path, path: Path) -> Path:
    """``inv`` with the lab's other user logging in (own key; behind the bastion, own ssh
    config) and no data volume (the data host does not let that user in)."""
    cfg = lab.lab.config
    text = inv.read_text()
    head, _, rest = text.partition("[data]\n")
    rest = rest[rest.index("\n\n") :]  # the [data] table ends at the first blank line
    text = (head + rest).replace(f'user = "{cfg.user}"', f'user = "{cfg.other_user}"', 1)
    text = text.replace(json.dumps(str(cfg.identity_file)), json.dumps(str(cfg.other_identity_file)), 1)
    if cfg.bastion:
        text = text.replace(json.dumps(str(cfg.ssh_config)), json.dumps(str(cfg.ssh_config_of(cfg.other_user))), 1)
    path.write_text(text)
    return path


def test_two_users_waiting_first_come_first_served(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path, busy: None
) -> None:
    """Issue 12: the one who asked first gets the first GPUs that fit; the other waits on.
    Two users of the hosts, each with their own key, each with their own forge."""
    inv = _with_policy(env_lab, tmp_path, 'waiter_timeout = "6s"')
    other = _as_the_other_user(lab, inv, tmp_path / "hosts-other.toml")
    first, second = new_env(env_lab), new_env(env_lab)
    a = waiter(inv, first)
    try:
        in_line(lab, first, a)
        # The line orders by the second a waiter queued (the host's clock), then by ticket ID:
        # two waiters within one second are ordered by ID (the same order for everyone). The
        # second one asks a second later, so that it is behind by the clock, not by chance.
        time.sleep(1.1)
        b = waiter(other, second)
        in_line(lab, second, b)
        time.sleep(2)  # several looks at the fleet: nobody launches, nobody leaves
        assert a.poll() is None and b.poll() is None
        ps = json.loads(forge(inv, "ps", "gpu1", "--json").stdout)["waiting"]
        assert [(w["env"], w["owner"], w["gpus"], w["place"], w["of"]) for w in ps] == [
            (first, lab.user, 2, 1, 2), (second, lab.other_user, 2, 2, 2)
        ]  # fmt: skip
        lab.lab.load_gpus("gpu2", [0, 1], utilization_pct=0, memory_used_mib=0)  # two GPUs free up
        out, err = a.communicate(timeout=180)
        assert a.returncode == 0, err
        got = json.loads(out)
        assert (got["host"], got["gpu_indexes"]) == ("gpu2", [0, 1])
        assert tickets(lab, first) == []  # out of the line once it had the GPUs
        time.sleep(2)
        assert b.poll() is None  # the two GPUs went to the first: the second waits on
        lab.lab.load_gpus("gpu3", [2, 3], utilization_pct=0, memory_used_mib=0)
        out, err = b.communicate(timeout=180)
        assert b.returncode == 0, err
        got = json.loads(out)
        assert (got["host"], got["gpu_indexes"], got["owner"]) == ("gpu3", [2, 3], lab.other_user)
        assert tickets(lab, second) == []
    finally:
        for p in (a, locals().get("b")):
            if p is not None and p.poll() is None:
                p.kill()
    assert forge(inv, "stop", first, "--keep-ssh-config").returncode == 0
    assert forge(other, "stop", second, "--keep-ssh-config").returncode == 0


def test_a_waiter_killed_stops_blocking_after_its_timeout(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path, busy: None
) -> None:
    inv = _with_policy(env_lab, tmp_path, 'waiter_timeout = "6s"')
    dead, alive = new_env(env_lab), new_env(env_lab)
    a = waiter(inv, dead)
    in_line(lab, dead, a)
    a.kill()  # kill -9: no chance to leave the line
    a.communicate(timeout=30)
    time.sleep(1.1)  # behind the dead one by the clock, not by ticket ID (see the test above)
    b = waiter(inv, alive)
    try:
        in_line(lab, alive, b)
        lab.lab.load_gpus("gpu2", [0, 1], utilization_pct=0, memory_used_mib=0)
        # the dead waiter's place on gpu2 still counts now, until its ticket expires
        fmt = '{{index .Labels "forge.wait.until"}}'
        names = lab.docker("gpu2", "volume", "ls", "-q", "--filter", f"label=forge.wait.env={dead}").stdout.split()
        until = max(int(lab.docker("gpu2", "volume", "inspect", "--format", fmt, n).stdout) for n in names)
        assert until > int(lab.ssh("gpu2", "date", "+%s").stdout)
        out, err = b.communicate(timeout=180)  # behind the dead one until its tickets expire
        assert b.returncode == 0, err
        got = json.loads(out)
        assert got["host"] == "gpu2"
        created = lab.docker("gpu2", "inspect", "--format", "{{.Id}} {{.Created}}", got["container"]).stdout
        (launched,) = quota.parse_created(created).values()
        assert launched >= until  # not before the dead waiter's place expired
    finally:
        if b.poll() is None:
            b.kill()
        for h in HOSTS:  # what the dead waiter left, where nobody listed it after it expired
            names = lab.docker(h, "volume", "ls", "-q", "--filter", f"label=forge.wait.env={dead}").stdout.split()
            if names:
                lab.docker(h, "volume", "rm", "-f", *names)
    assert forge(inv, "stop", alive, "--keep-ssh-config").returncode == 0


def test_a_wait_that_times_out_or_is_interrupted_leaves_the_line(
    lab: LabHandle, env_lab: dict[str, Any], tmp_path: Path, busy: None
) -> None:
    inv = env_lab["inventory"]
    late = new_env(env_lab)
    r = forge(inv, "migrate", "--env", late, "--among", ",".join(HOSTS), "--wait", "--wait-timeout", "2s",
              "--wait-interval", "0.5")  # fmt: skip
    assert r.returncode == 7, r.stderr
    assert "migrate failed at step 'choose': 1 free GPU(s) did not come within 2s" in r.stderr
    assert tickets(lab, late) == []
    gone = new_env(env_lab)
    w = waiter(inv, gone)
    in_line(lab, gone, w)
    os.killpg(w.pid, signal.SIGINT)  # Ctrl-C
    _, err = w.communicate(timeout=60)
    assert w.returncode == 130, err
    assert tickets(lab, gone) == [] and envs_on(lab, "gpu1", gone) == []


def test_a_recheck_that_fails_after_claiming_releases_the_claims(
    lab: LabHandle, env_lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPUs are claimed, then probed again; if that probe fails (a timeout, a lost
    connection, Ctrl-C) before the run's undo knows the claims, they are released all the
    same: no claim holds GPUs for nothing until it counts as stale."""
    from forge.env import migrate as mig
    from forge.errors import CommandTimeout, ForgeError

    inv, env = inventory.load_file(env_lab["inventory"]), new_env(env_lab)
    rechecks: list[str] = []

    def timed_out(inv: Any, s: Any, gpus: Any, uuids: Any) -> list[str]:
        rechecks.append(s.name)
        raise CommandTimeout(s.name, "the probe ran past its timeout of 30 s")

    monkeypatch.setattr(mig, "still_free", timed_out)
    keys = (Path(str(lab.identity_file) + ".pub")).read_text()
    req = mig.request_from(inv, env=env, to="gpu2", authorized_keys=keys)
    with Pool() as pool, pytest.raises(ForgeError, match="ran past its timeout"):
        mig.migrate(inv, req, pool)
    assert rechecks == ["gpu2"]
    assert envs_on(lab, "gpu2", env) == [] and claims_on(lab, "gpu2", env) == []


def test_a_volume_check_that_times_out_removes_the_volume_and_mount_it_made(
    lab: LabHandle, env_lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``volume.ensure`` created is removed when its check fails in any way, not only
    when the check says the volume is unreadable: here the check runs past its timeout."""
    from forge.errors import CommandTimeout

    inv = inventory.load_file(env_lab["inventory"])
    host = inv.host("gpu3")
    data = inventory.DataSettings(**{**vars(inv.data), "volume": f"forge-slow-{uuid.uuid4().hex[:8]}"})
    slow = ["run", "--rm", "--network", "none", IMAGE, "sleep", "30"]  # not using the volume
    monkeypatch.setattr(volume, "check_args", lambda spec, **kw: slow)
    with Pool() as pool:
        t = pool.get(host)
        facts = host_facts(t)
        spec = volume.spec_for(data, host_name=host.name, user=facts.user, home=facts.home)
        kw = {"check_image": IMAGE, "uid": facts.uid, "gid": facts.gid, "marker": DATA_MARKER, "timeout": 10}
        try:
            with pytest.raises(CommandTimeout):
                volume.ensure(t, spec, **kw)  # type: ignore[arg-type]
            assert lab.docker("gpu3", "volume", "inspect", spec.name).returncode != 0
            assert spec.mountpoint and not os.path.ismount(str(spec.mountpoint))
        finally:
            volume.drop(t, spec)


def test_ctrl_c_while_the_container_is_being_created_leaves_no_container(
    lab: LabHandle, env_lab: dict[str, Any]
) -> None:
    """Ctrl-C lands while `docker run -d` is still creating the container on the host (here:
    the host starts it a second late, as a loaded one may): the run is waited for, then undone,
    so no container is left to start by itself on GPUs whose claims were released."""
    import threading

    from forge.env import migrate as mig

    inv, env = inventory.load_file(env_lab["inventory"]), new_env(env_lab)

    class LateHost(Through):
        def run(self, command: Any, **kw: Any) -> Any:
            if not (isinstance(command, list) and "run" in command and "-d" in command):
                return self.inner.run(command, **kw)
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C meanwhile
            return self.inner.run(["sh", "-c", 'sleep 1; exec "$@"', "sh", *command], **kw)

    keys = (Path(str(lab.identity_file) + ".pub")).read_text()
    req = mig.request_from(inv, env=env, to="gpu2", authorized_keys=keys)
    with Pool(LateHost) as pool, pytest.raises(KeyboardInterrupt):
        mig.migrate(inv, req, pool)
    time.sleep(2)  # a run still going on the host would have made its container by now
    assert envs_on(lab, "gpu2", env) == [] and claims_on(lab, "gpu2", env) == []

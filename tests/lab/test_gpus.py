"""`forge gpus` on the lab: scripted GPU states on 4 real hosts, exact table and JSON.

gpu1: two GPUs; GPU 0 held by a real process of user `nobody`, GPU 1 held by a process in a
      container that forge labelled (env "dev", owner "alice").
gpu2: four GPUs; GPU 2 has memory in use but no process (busy by memory), the others free.
gpu3: sshd stopped (host down).
gpu4: no nvidia-smi installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from forge.lab.gpus import default_state as default_gpu_state
from tests.lab.conftest import docker_down  # noqa: E402
from tests.lab.envkit import lab_gpu  # noqa: E402

pytestmark = pytest.mark.lab

U = {
    "g1a": "GPU-11111111-aaaa-4bbb-8ccc-000000000010",
    "g1b": "GPU-11111111-aaaa-4bbb-8ccc-000000000011",
    "g2": [f"GPU-22222222-aaaa-4bbb-8ccc-00000000002{i}" for i in range(4)],
}


def gpu(index: int, uuid: str, used: int, util: int) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": uuid,
        "name": "NVIDIA H200",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "memory_total_mib": 143771,
        "memory_used_mib": used,
        "utilization_gpu_pct": util,
        "utilization_memory_pct": 0,
        "temperature_c": 40,
        "power_draw_w": 100.0,
        "power_limit_w": 700.0,
        "compute_mode": "Default",
        "mig_mode": "Disabled",
    }


def forge_cli(lab: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge", "-i", str(lab.inventory_path), "gpus", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def scripted(lab: Any) -> Iterator[dict[str, Any]]:
    g1, g2, g3, g4 = lab.hosts[:4]
    image = lab.load_base_image(g1)
    # A real process of another user, on the machine (the lab's hosts share its pid space).
    sleeper = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "600"])
    name = "forge-test-gpus-holder"
    lab.docker(g1, "rm", "-f", name)
    run = lab.docker(
        g1,
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "forge.env=dev",
        "--label",
        "forge.owner=alice",
        image,
        "sleep",
        "600",
    )
    assert run.returncode == 0, run.stderr
    cpid = int(lab.docker(g1, "inspect", "-f", "{{.State.Pid}}", name).stdout.strip())
    lab.set_gpus(
        g1,
        {
            "gpus": [gpu(0, U["g1a"], 30000, 95), gpu(1, U["g1b"], 12000, 40)],
            "processes": [
                {"pid": sleeper.pid, "name": "/usr/bin/python3", "used_memory_mib": 30000, "gpu_uuid": U["g1a"]},
                {"pid": cpid, "name": "python", "used_memory_mib": 12000, "gpu_uuid": U["g1b"]},
            ],
        },
    )
    lab.set_gpus(g2, {"gpus": [gpu(i, u, 20000 if i == 2 else 0, 0) for i, u in enumerate(U["g2"])], "processes": []})
    lab.set_gpus(g4, None)
    try:
        with lab.host_down(g3):
            yield {"sleeper": sleeper.pid, "cpid": cpid, "hosts": (g1, g2, g3, g4)}
    finally:
        sleeper.kill()
        sleeper.wait()
        lab.docker(g1, "rm", "-f", name)
        for h in (g1, g2, g4):
            lab.reset_gpus(h)


def _down_reason(lab: Any, address: str) -> str:
    """Why a host whose sshd is down did not answer: refused outright in a direct lab;
    behind a bastion, the jump host could not reach it."""
    if not lab.bastion:
        return f"connection refused by {address}:22 (is sshd running?)"
    jump = lab.lab.config.jump_host().address
    return (
        f"jump host jump ({jump}:22) could not reach {address}:22: "
        "the connection failed (is the host up and its sshd running?)"
    )


def test_table(lab: Any, scripted: dict[str, Any]) -> None:
    g1, g2, g3, g4 = scripted["hosts"]
    addr3 = lab.address(g3)
    r = forge_cli(lab)
    assert r.returncode == 4, r.stderr  # one host did not answer
    pid, cpid = scripted["sleeper"], scripted["cpid"]
    expected = [
        ("HOST", "GPU", "MODEL", "MEMORY", "UTIL", "HOLDER", "STATE"),
        (
            g1,
            "0",
            "NVIDIA H200",
            "30000 / 143771 MiB",
            "95 %",
            f"nobody sleep:{pid}",  # ps names the process, not nvidia-smi (it says python3)
            "busy: 30000 MiB used (> 1024)",
        ),
        (
            g1,
            "1",
            "NVIDIA H200",
            "12000 / 143771 MiB",
            "40 %",
            f"alice [dev] sleep:{cpid}",
            "busy: 12000 MiB used (> 1024)",
        ),
        (g2, "0", "NVIDIA H200", "0 / 143771 MiB", "0 %", "-", "free"),
        (g2, "1", "NVIDIA H200", "0 / 143771 MiB", "0 %", "-", "free"),
        (g2, "2", "NVIDIA H200", "20000 / 143771 MiB", "0 %", "-", "busy: 20000 MiB used (> 1024)"),
        (g2, "3", "NVIDIA H200", "0 / 143771 MiB", "0 %", "-", "free"),
        (g3, "-", "", "", "", "", f"unreachable: {_down_reason(lab, addr3)}"),
        (g4, "-", "", "", "", "", "no GPUs: nvidia-smi is not installed (not on the PATH of the host's shell)"),
    ]
    from forge.cli.output import table

    assert r.stdout == table([list(row) for row in expected[1:]], list(expected[0])) + "\n"


def test_json(lab: Any, scripted: dict[str, Any]) -> None:
    g1, g2, g3, g4 = scripted["hosts"]
    r = forge_cli(lab, "--json")
    assert r.returncode == 4, r.stderr
    data = json.loads(r.stdout)
    by = {h["name"]: h for h in data["hosts"]}
    assert [h["name"] for h in data["hosts"]] == list(lab.hosts)
    assert data["summary"] == {"hosts": 4, "answered": 3, "gpus": 6, "free": 3}
    h1 = by[g1]
    assert (h1["answered"], h1["status"]) == (True, "ok")
    a, b = h1["gpus"]
    assert a["uuid"] == U["g1a"] and a["free"] is False and a["utilization_gpu_pct"] == 95
    assert a["processes"] == [
        {
            "pid": scripted["sleeper"],
            "name": "sleep",  # what ps says; nvidia-smi's name (/usr/bin/python3) is not asked for
            "user": "nobody",
            "used_memory_mib": 30000,
            "container_id": None,
            "env": None,
            "env_owner": None,
        }
    ]
    (p,) = b["processes"]
    assert (p["pid"], p["env"], p["env_owner"]) == (scripted["cpid"], "dev", "alice")
    assert p["container_id"] and len(p["container_id"]) == 64
    assert [g["free"] for g in by[g2]["gpus"]] == [True, True, False, True]
    assert by[g2]["policy"] == {"max_memory_used_mib": 1024, "max_utilization_pct": 10, "max_foreign_processes": 0}
    assert (by[g3]["answered"], by[g3]["status"]) == (False, "unreachable")
    assert by[g3]["reason"] == _down_reason(lab, lab.address(g3))
    assert (by[g4]["answered"], by[g4]["status"], by[g4]["gpus"]) == (True, "not_installed", [])


def test_free_filter_policy_flags_and_ranking(lab: Any, scripted: dict[str, Any]) -> None:
    g1, g2, _, _ = scripted["hosts"]
    r = forge_cli(lab, "--free", "--json", "--gpus", "2")
    data = json.loads(r.stdout)
    free = [(h["name"], g["index"]) for h in data["hosts"] for g in h["gpus"]]
    assert free == [(g2, 0), (g2, 1), (g2, 3)]
    assert data["candidates"] == [
        {"host": g2, "gpu_indexes": [0, 1], "gpu_labels": ["0", "1"], "gpu_uuids": U["g2"][:2], "free_gpus": 3},
    ]
    # Loosen the policy on the command line: memory and utilization no longer make g1 busy,
    # but someone else's process still does; alice's container is not forgelab's either.
    r = forge_cli(lab, "--json", "--max-memory-used", "50000", "--max-utilization", "100", g1)
    (h1,) = json.loads(r.stdout)["hosts"]
    assert r.returncode == 0
    assert [(g["free"], g["reason"]) for g in h1["gpus"]] == [
        (False, "1 process of nobody"),
        (False, "1 process of alice"),
    ]
    r = forge_cli(
        lab, "--json", "--max-memory-used", "50000", "--max-utilization", "100", "--max-foreign-processes", "1", g1
    )
    assert [g["free"] for g in json.loads(r.stdout)["hosts"][0]["gpus"]] == [True, True]


@pytest.mark.parametrize("case", range(10))
def test_host_nvidia_smi_replays_the_real_captures_byte_for_byte(lab: Any, case: int) -> None:
    """A state set by a test comes out of the host's nvidia-smi, over SSH, exactly as the real
    H200 printed it: through the pre-rendered answers (the probe's queries) and the renderer."""
    from tests.unit.test_fake_gpu import BYTE_FOR_BYTE, H200

    name, state, args = BYTE_FOR_BYTE[case]
    host = lab.hosts[-1]
    lab.set_gpus(host, state)
    try:
        r = lab.ssh(host, "nvidia-smi", *args)
    finally:
        lab.reset_gpus(host)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (H200 / name).read_text(encoding="utf-8")


def test_every_host_has_gpus_of_its_own(lab: Any) -> None:
    r = forge_cli(lab, "--json")
    assert r.returncode == 0, r.stderr
    uuids = [g["uuid"] for h in json.loads(r.stdout)["hosts"] for g in h["gpus"]]
    assert len(uuids) == 4 * len(lab.hosts) and len(set(uuids)) == len(uuids)


def test_watch_redraws_until_interrupted(lab: Any) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forge",
            "-i",
            str(lab.inventory_path),
            "gpus",
            "--watch",
            "--interval",
            "0.2",
            lab.hosts[0],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    seen = ""
    assert proc.stdout is not None
    while seen.count("forge gpus —") < 3 and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    seen += out
    assert proc.returncode == 0, err
    frames = seen.count("forge gpus —")
    assert frames >= 3
    # every frame drawn before the interrupt shows the host's first GPU
    assert seen.count(f"{lab.hosts[0]}    0") >= frames - 1 >= 2


def test_ctrl_c_at_any_moment_of_watch_ends_it_cleanly(lab: Any) -> None:
    """Issue 11 #6: a Ctrl-C landing inside the thread pool's lock handling ended in
    "forge: internal error: RuntimeError: release unlocked lock" (seen once in a full run).
    Interrupt at many moments after the first frame: mid-probe, mid-draw, while waiting."""
    import random
    import signal
    import time

    rng = random.Random(11)
    argv = [sys.executable, "-m", "forge", "-i", str(lab.inventory_path), "gpus", "--watch", "--interval", "0.05"]
    for _ in range(12):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("forge gpus —")  # forge runs (not Python starting up)
        time.sleep(rng.uniform(0, 0.3))  # frames come every ~0.1 s: the probe may be anywhere
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "internal error" not in err and "Traceback" not in err, err


def test_the_hosts_docker_host_is_asked_for_container_labels(lab: Any, scripted: dict[str, Any], tmp_path: Any) -> None:
    """The probe asks the daemon named by the host's docker_host (not docker's default)."""
    g1 = scripted["hosts"][0]
    socket = f"unix://{lab.root}/hosts/{g1}/docker.sock"
    for docker_host, env in ((socket, "dev"), ("unix:///nonexistent/docker.sock", None)):
        text = lab.inventory_path.read_text().replace(
            f'name = "{g1}"\n', f'name = "{g1}"\ndocker_host = "{docker_host}"\n', 1
        )
        inv = tmp_path / "hosts.toml"
        inv.write_text(text)
        r = subprocess.run(
            [sys.executable, "-m", "forge", "-i", str(inv), "gpus", "--json", g1],
            capture_output=True,
            text=True,
            timeout=120,
        )
        (host,) = json.loads(r.stdout)["hosts"]
        (proc,) = host["gpus"][1]["processes"]
        assert proc["pid"] == scripted["cpid"] and proc["env"] == env
        if env is None:  # no daemon there: forge cannot tell which GPUs environments hold
            assert r.returncode == 4, r.stderr
            assert host["holds_unknown"] == "the Docker daemon is not running"
            assert not any(g["free"] for g in host["gpus"])
        else:
            assert r.returncode == 0, r.stderr


def test_gpus_given_to_forge_environments_are_not_free(lab: Any) -> None:
    """A GPU given to a forge environment (its container's forge.gpus label) or claimed for
    one (a claim container) is held, even while no process runs on it: `forge gpus` shows it
    busy with its holder, and the ranking does not offer it."""
    host = lab.hosts[1]
    image = lab.load_base_image(host)
    state = default_gpu_state(host)
    u = [g["uuid"] for g in state["gpus"]]
    env_c, claim_c = "forge-test-held-env", "forge-test-held-claim"
    lab.docker(host, "rm", "-f", env_c, claim_c)
    try:
        r = lab.docker(
            host,
            "run",
            "-d",
            "--name",
            env_c,
            "--label",
            "forge.env=dev",
            "--label",
            "forge.owner=alice",
            "--label",
            f"forge.gpus={u[1]}",
            image,
            "sleep",
            "600",
        )
        assert r.returncode == 0, r.stderr
        r = lab.docker(
            host,
            "create",
            "--name",
            claim_c,
            "--label",
            f"forge.claim={u[2]}",
            "--label",
            "forge.claim.env=train",
            "--label",
            "forge.claim.owner=bob",
            image,
            "true",
        )
        assert r.returncode == 0, r.stderr
        out = forge_cli(lab, "--json", "--gpus", "2", host)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        gpus = data["hosts"][0]["gpus"]
        assert [(g["free"], g["reason"]) for g in gpus] == [
            (True, "free"),
            (False, "held by alice's environment dev"),
            (False, "held by bob's environment train (claimed)"),
            (True, "free"),
        ]
        assert gpus[1]["held_by"] == {"env": "dev", "owner": "alice", "kind": "container"}
        assert [(c["host"], c["gpu_indexes"]) for c in data["candidates"]] == [(host, [0, 3])]
        table = forge_cli(lab, host).stdout.splitlines()
        assert "alice [dev]" in table[3] and "held by alice's environment dev" in table[3]
        assert "bob [train]" in table[4]
    finally:
        lab.docker(host, "rm", "-f", env_c, claim_c)


def test_a_host_whose_driver_is_not_loaded_fails_the_run(lab: Any) -> None:
    """Issue 11 #7: for cron and monitoring, unreadable GPUs are a failed host (exit 4)."""
    host = lab.hosts[1]
    lab.set_gpus(host, {**default_gpu_state(host), "mode": "driver_not_loaded"})
    try:
        r = forge_cli(lab, "--json")
        assert r.returncode == 4, r.stderr
        by = {h["name"]: h for h in json.loads(r.stdout)["hosts"]}
        assert by[host]["status"] == "driver_error" and not by[host]["served"]
        assert all(by[h]["served"] for h in lab.hosts if h != host)
        table = forge_cli(lab, host)
        assert table.returncode == 4 and "the NVIDIA driver is not loaded" in table.stdout
    finally:
        lab.reset_gpus(host)
    assert forge_cli(lab, host).returncode == 0


def test_a_host_whose_docker_daemon_is_down_shows_no_free_gpu(lab: Any) -> None:
    """Issue 11 #10: its GPUs were shown free with exit 0, though forge could not see the
    environments and claims there; and the message quoted forge's internal command line."""
    host = lab.hosts[2]
    with docker_down(lab, host):
        r = forge_cli(lab, "--json")
        assert r.returncode == 4, r.stderr
        by = {h["name"]: h for h in json.loads(r.stdout)["hosts"]}
        assert by[host]["holds_unknown"] == "the Docker daemon is not running"
        assert by[host]["gpus"] and not any(g["free"] for g in by[host]["gpus"])
        assert all(g["reason"] == "unknown: the Docker daemon is not running" for g in by[host]["gpus"])
        table = forge_cli(lab, host)
        assert table.returncode == 4 and "sh -c" not in table.stdout + table.stderr
        assert "unknown: the Docker daemon is not running" in table.stdout
    assert forge_cli(lab, host).returncode == 0


def _pty_size(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_watch_on_a_terminal_fits_the_screen_and_follows_a_resize(lab: Any) -> None:
    """Issue 15: on a terminal too small for a row per GPU, one line per host; frames drawn in
    place on the alternate screen; a resize lays the frame out again, after a burst of them too;
    Ctrl-C restores it."""
    import os
    import select
    import signal
    import time

    master, slave = os.openpty()
    _pty_size(slave, 15, 120)  # 16 GPUs do not fit in 15 lines
    argv = [sys.executable, "-m", "forge", "-i", str(lab.inventory_path), "gpus", "--watch", "--interval", "30"]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    seen = b""

    def frame_with(marker: bytes, after: int) -> bytes:
        """The first whole frame (cursor home ... erase below) after `after` that shows `marker`:
        a pty hands a frame over in pieces, so a header seen is not a frame read."""
        nonlocal seen
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for frame in re.findall(rb"\x1b\[H(.*?)\x1b\[J", seen[after:], re.S):
                if marker in frame:
                    return frame
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 65536)
        raise AssertionError(seen[after:].decode(errors="replace"))

    try:
        first = frame_with(b"HOLDERS", 0)  # the per-host view
        assert seen.startswith(b"\x1b[?1049h\x1b[?25l")
        assert first.count(b"\n") < 15
        mark = len(seen)
        _pty_size(master, 40, 120)
        proc.send_signal(signal.SIGWINCH)
        second = frame_with(b"STATE", mark)  # the same frame, now a row per GPU, long before the next probe
        rows = [line for line in second.split(b"\n") if line.startswith(lab.hosts[0].encode())]
        assert len(rows) == 4
        for _ in range(300):  # a window dragged: resizes in a burst (a handler that took a lock hung here)
            proc.send_signal(signal.SIGWINCH)
            if select.select([master], [], [], 0.002)[0]:
                seen += os.read(master, 65536)
        mark = len(seen)
        _pty_size(master, 15, 120)
        proc.send_signal(signal.SIGWINCH)
        assert b"STATE" not in frame_with(b"HOLDERS", mark)  # still answering: back to a line per host
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        while select.select([master], [], [], 0.5)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
        assert seen.rstrip().endswith(b"\x1b[?25h\x1b[?1049l")  # the screen and the cursor are back
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


# ----------------------------------------------------------------- forge lab gpu, gpus --wait


@pytest.fixture()
def all_busy(lab: Any) -> Iterator[list[str]]:
    """Every GPU of every lab host at work (through `forge lab gpu`); idle again afterwards."""
    hosts = list(lab.hosts)
    try:
        for h in hosts:
            r = lab_gpu(lab, h, "--busy", "all", "--util", "70", "--memory", "30000")
            assert r.returncode == 0, r.stderr
        yield hosts
    finally:
        for h in hosts:
            lab.lab.reset_gpus(h)


def test_lab_gpu_sets_what_forge_gpus_sees(lab: Any) -> None:
    host = lab.hosts[0]
    try:
        r = lab_gpu(lab, host, "--busy", "0,2", "--util", "80", "--memory", "30000")
        assert r.returncode == 0, r.stderr
        seen = json.loads(forge_cli(lab, host, "--json").stdout)["hosts"][0]["gpus"]
        got = [(g["index"], g["utilization_gpu_pct"], g["memory_used_mib"], g["free"]) for g in seen]
        assert got == [(0, 80, 30000, False), (1, 0, 0, True), (2, 80, 30000, False), (3, 0, 0, True)]
        assert lab_gpu(lab, host, "--idle", "all").returncode == 0
        seen = json.loads(forge_cli(lab, host, "--json").stdout)["hosts"][0]["gpus"]
        assert [g["free"] for g in seen] == [True] * 4
        bad = lab_gpu(lab, host, "--busy", "7")
        assert bad.returncode == 2 and "no GPU 7 (the host has 0, 1, 2, 3)" in bad.stderr
        # --user: a real process of that user holds the GPU, and forge names them
        assert lab_gpu(lab, host, "--busy", "1", "--user", "nobody", "--memory", "9000").returncode == 0
        (g1,) = [g for g in json.loads(forge_cli(lab, host, "--json").stdout)["hosts"][0]["gpus"] if g["index"] == 1]
        (proc,) = g1["processes"]
        assert (proc["user"], proc["used_memory_mib"], g1["free"]) == ("nobody", 9000, False)
        users = json.loads(forge_cli(lab, host, "--by", "user", "--json").stdout)["users"]
        assert any(u["user"] == "nobody" for u in users), users
        assert lab_gpu(lab, host, "--idle", "1").returncode == 0
        assert not psutil.pid_exists(proc["pid"]) or psutil.Process(proc["pid"]).status() == psutil.STATUS_ZOMBIE
        nouser = lab_gpu(lab, host, "--busy", "1", "--user", "no-such-user-here")
        assert nouser.returncode != 0 and "no user 'no-such-user-here' on this machine" in nouser.stderr
    finally:
        lab.lab.reset_gpus(host)


def test_wait_returns_once_a_host_has_the_gpus(lab: Any, all_busy: list[str]) -> None:
    argv = [sys.executable, "-m", "forge", "-i", str(lab.inventory_path), "gpus", "--wait", "2", "--interval", "0.5",
            "--json"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # it keeps waiting while nothing fits (several probes: 0.5 s apart)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(3)
        target = all_busy[1]
        assert lab_gpu(lab, target, "--idle", "1,3").returncode == 0
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (best,) = json.loads(out)["candidates"]
    assert (best["host"], best["gpu_indexes"]) == (target, [1, 3])


def test_wait_gives_up_after_its_timeout_and_refuses_what_never_fits(lab: Any, all_busy: list[str]) -> None:
    late = forge_cli(lab, "--wait", "1", "--wait-timeout", "2s", "--interval", "0.5")
    assert late.returncode == 7, late.stderr
    assert "1 free GPU(s) on one host did not fit within 2s" in late.stderr
    never = forge_cli(lab, "--wait", "5", "--interval", "0.5")
    assert never.returncode == 1
    assert "cannot wait for 5 free GPU(s) on one host: no host has 5 GPUs (the most on one host is 4)" in never.stderr

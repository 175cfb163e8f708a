"""The GPU probe: the one remote script (run here under dash with the replayed nvidia-smi) and
its pure parser."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from forge import shell
from forge.gpu import mig, nvsmi, probe
from forge.gpu.model import ProbeStatus
from forge.gpu.policy import FreePolicy, assess, select
from forge.inventory import Host
from forge.lab import fake_gpu
from forge.lab import gpus as lab_gpus
from forge.session import HostSession
from forge.transport.base import CommandResult
from forge.transport.local import LocalTransport

ROOT = Path(__file__).parent.parent.parent
FAKE = ROOT / "forge" / "lab" / "fake_gpu.py"
H200 = ROOT / "tests" / "fixtures" / "nvidia-smi" / "h200-driver580"
EDGE = ROOT / "tests" / "fixtures" / "nvidia-smi" / "edge-cases"
M = probe.MARKER
CID = "4f1c2b3a" * 8
CID2 = "9e8d7c6b" * 8
U0 = "GPU-3b9e8f4a-6c1d-4e2f-9a7b-1c2d3e4f5a61"
U1 = "GPU-7d2c1b0a-9e8f-4d6c-8b5a-2f3e4d5c6b72"


def result(stdout: str, exit_status: int = 0, stderr: str = "") -> CommandResult:
    return CommandResult("gpu1", "probe", exit_status, stdout, stderr, 0.05)


def section(name: str, text: str, status: int | None = 0) -> str:
    out = f"{M} {name}\n{text}"
    if status is not None:
        out += f"{M} status {status}\n"
    return out


GPUS = (H200 / "query_gpu_nounits_busy.csv").read_text()
# The capture less its process_name cell, which forge does not ask for (forge.gpu.nvsmi).
APPS = re.sub(r"^(\d+), [^,]*, ", r"\1, ", (H200 / "query_apps_nounits_busy.csv").read_text(), flags=re.M)


# ------------------------------------------------------------------------------- the command


def test_probe_command_is_one_sh_script_with_quoted_arguments() -> None:
    command = probe.probe_command()
    assert isinstance(command, shell.Script)
    assert command.startswith("sh -c ")
    assert shell.quote(",".join(nvsmi.GPU_FIELDS)) in command
    assert shell.quote(",".join(nvsmi.APP_FIELDS)) in command
    assert shell.quote(probe.DOCKER_FORMAT) in command
    assert probe.probe_command() == command  # constant


def test_docker_format_names_the_forge_labels() -> None:
    assert '.Label "forge.env"' in probe.DOCKER_FORMAT and '.Label "forge.owner"' in probe.DOCKER_FORMAT


# ------------------------------------------------------------------- the script, run for real


def _host(tmp_path: Path, state: dict[str, Any] | None) -> dict[str, str]:
    """A PATH with the replayed nvidia-smi (or without any) and its state file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    if state is not None:
        shutil.copy(FAKE, bin_dir / "nvidia-smi")
        (bin_dir / "nvidia-smi").chmod(0o755)
        (tmp_path / "gpus.json").write_text(json.dumps(state))
        env["FORGE_LAB_GPU_STATE"] = str(tmp_path / "gpus.json")
    return env


def _transport(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> LocalTransport:
    """A transport whose ``sh -c`` sees ``env``: LocalTransport runs it with this process's
    environment, so ``env`` (the host's PATH and state file) is set here for the test."""
    monkeypatch.delenv("FORGE_LAB_GPU_STATE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return LocalTransport("gpu1")


def _session(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> HostSession:
    return HostSession(Host(name="gpu1", address="localhost", local=True), _transport(monkeypatch, env))


def _state(processes: list[dict[str, Any]]) -> dict[str, Any]:
    state = fake_gpu.default_state()
    state["processes"] = processes
    return state


needs_tools = pytest.mark.skipif(
    not (os.path.exists("/usr/bin/python3") and shutil.which("ps")), reason="needs /usr/bin/python3 and ps"
)


@needs_tools
def test_real_script_with_replayed_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    gone = 4_000_000 - 7  # a pid that does not exist: ps just leaves it out
    state = _state(
        [
            {"pid": os.getpid(), "name": "/usr/bin/python3", "used_memory_mib": 20480, "gpu_uuid": U1},
            {"pid": gone, "name": "/opt/a, b/python3", "used_memory_mib": 100, "gpu_uuid": U0},
        ]
    )
    state["gpus"][1]["memory_used_mib"] = 20500
    host = probe.probe_host(_session(monkeypatch, _host(tmp_path, state)), timeout=30)
    assert host.status is ProbeStatus.OK, host.reason
    assert [g.uuid for g in host.gpus] == [g["uuid"] for g in state["gpus"]]
    by_pid = {p.pid: p for p in host.processes}
    assert by_pid[os.getpid()].user == me
    assert by_pid[os.getpid()].gpu_uuid == U1 and by_pid[os.getpid()].used_memory_mib == 20480
    assert by_pid[os.getpid()].name == Path("/proc/self/comm").read_text().strip()  # from ps, not nvidia-smi
    assert by_pid[gone].user is None and by_pid[gone].name == ""  # ps does not list it: no name
    assert all(p.container_id is None for p in host.processes)  # no docker cgroup here


@needs_tools
def test_real_script_idle_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = probe.probe_host(_session(monkeypatch, _host(tmp_path, _state([]))), timeout=30)
    assert host.status is ProbeStatus.OK and len(host.gpus) == 4 and host.processes == ()


@needs_tools
@pytest.mark.parametrize(
    ("mode", "status"), [("no_devices", ProbeStatus.NO_GPUS), ("driver_not_loaded", ProbeStatus.DRIVER_ERROR)]
)
def test_real_script_failure_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, status: ProbeStatus
) -> None:
    state = {**_state([]), "mode": mode}
    transport = _transport(monkeypatch, _host(tmp_path, state))
    raw = transport.run(probe.probe_command(), timeout=30)
    assert raw.exit_status == 0
    assert f"{M} apps" not in raw.stdout  # the script stops after a failed GPU query
    host = probe.parse_probe("gpu1", raw)
    assert host.status is status and host.reason and host.gpus == ()


def test_real_script_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _transport(monkeypatch, _host(tmp_path, None)).run(probe.probe_command(), timeout=30)
    assert f"{M} status 127" in raw.stdout
    host = probe.parse_probe("gpu1", raw)
    assert host.status is ProbeStatus.NOT_INSTALLED
    assert "not installed" in (host.reason or "")


SHELLS = [s for s in ("dash", "busybox") if shutil.which(s)]
# The only programs the script may start besides nvidia-smi and docker: every other step is a
# shell builtin (each fork and exec is CPU the host pays on every probe).
HELPERS = ("date", "ps", "cat")


def _bare_host(tmp_path: Path, shell_name: str, docker_lines: str, apps_stub: str | None = None) -> dict[str, str]:
    """A PATH holding only `sh` (dash or busybox), the helpers, the replayed nvidia-smi (or a
    stub whose process query prints ``apps_stub``) and a docker stub that prints
    ``docker_lines``."""
    bin_dir = tmp_path / "bare"
    bin_dir.mkdir()
    sh = shutil.which(shell_name)
    assert sh is not None
    (bin_dir / "sh").symlink_to(sh)
    for name in HELPERS:  # procps ps even with busybox: its ps has no `-o user:64`
        found = shutil.which(name)
        assert found is not None
        (bin_dir / name).symlink_to(found)
    (tmp_path / "docker.out").write_text(docker_lines)
    (bin_dir / "docker").write_text(f'#!/bin/sh\nwhile IFS= read -r l; do echo "$l"; done <{tmp_path}/docker.out\n')
    (bin_dir / "docker").chmod(0o755)
    if apps_stub is None:
        shutil.copy(FAKE, bin_dir / "nvidia-smi")
    else:
        (tmp_path / "gpus.csv").write_text(GPUS)
        (tmp_path / "apps.out").write_text(apps_stub)
        (bin_dir / "nvidia-smi").write_text(
            "#!/bin/sh\n"
            f'case "$1" in --query-gpu=*) exec cat {tmp_path}/gpus.csv ;; esac\n'
            f"cat {tmp_path}/apps.out; exit 3\n"
        )
    (bin_dir / "nvidia-smi").chmod(0o755)
    state = _state([])
    (tmp_path / "gpus.json").write_text(json.dumps(state))
    return {"PATH": str(bin_dir), "LANG": "C.UTF-8", "FORGE_LAB_GPU_STATE": str(tmp_path / "gpus.json")}


@needs_tools
@pytest.mark.parametrize("shell_name", SHELLS)
def test_real_script_needs_only_builtins_and_three_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shell_name: str
) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    env = _bare_host(tmp_path, shell_name, ctr(CID, env="dev", owner="alice", gpus="1") + ctr(CID2, state="exited"))
    state = json.loads((tmp_path / "gpus.json").read_text())
    uuids = [g["uuid"] for g in state["gpus"]]
    # one process on two GPUs: listed twice by nvidia-smi, asked about once
    state["processes"] = [
        {"pid": os.getpid(), "name": "/usr/bin/python3", "used_memory_mib": 10, "gpu_uuid": uuids[0]},
        {"pid": os.getpid(), "name": "/usr/bin/python3", "used_memory_mib": 10, "gpu_uuid": uuids[2]},
    ]
    (tmp_path / "gpus.json").write_text(json.dumps(state))
    raw = _transport(monkeypatch, env).run(probe.probe_command(), timeout=30)
    assert raw.stderr == "" and raw.exit_status == 0
    sections = probe.split_sections(raw.stdout)
    assert list(sections) == ["gpus", "apps", "owners", "cgroups", "containers"]
    assert all(s.exit_status == 0 for s in sections.values())
    cgroup = " ".join(Path("/proc/self/cgroup").read_text().splitlines()) + " "
    assert sections["cgroups"].text == f"{os.getpid()} {cgroup}\n"  # the pid once
    comm = Path("/proc/self/comm").read_text().strip()
    assert probe.parse_owners(sections["owners"].text) == {os.getpid(): probe.Owner(me, comm)}
    host = probe.parse_probe("gpu1", raw)
    assert host.status is ProbeStatus.OK, host.reason
    assert [(p.user, p.name) for p in host.processes] == [(me, comm), (me, comm)]
    assert [(h.gpu_uuid, h.env, h.owner) for h in host.holds] == [(uuids[1], "dev", "alice")]
    assert raw.stdout.endswith(f"{M} end\n")


@needs_tools
@pytest.mark.parametrize("shell_name", SHELLS)
def test_real_script_process_query_failing_without_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shell_name: str
) -> None:
    env = _bare_host(tmp_path, shell_name, "", apps_stub="Unable to query processes")
    raw = _transport(monkeypatch, env).run(probe.probe_command(), timeout=30)
    sections = probe.split_sections(raw.stdout)
    assert sections["apps"] == probe.Section("Unable to query processes\n", 3)
    assert sections["owners"] == probe.Section("", 0) and sections["cgroups"] == probe.Section("", 0)
    host = probe.parse_probe("gpu1", raw)
    assert host.status is ProbeStatus.ERROR and "Unable to query processes" in (host.reason or "")


# ---------------------------------------------------------------------- the parser, on its own


def test_parse_ok_with_container_labels() -> None:
    stdout = (
        section("gpus", GPUS)
        + section("apps", APPS)
        + section("owners", "  455 root     python3\n")
        + section("cgroups", f"455 0::/system.slice/docker-{CID}.scope \n")
        + section("containers", "1764358000\n" + ctr(CID, env="alice-train", owner="alice") + ctr(CID2, env="bob-dev"))
        + f"{M} end\n"
    )
    host = probe.parse_probe("gpu1", result(stdout))
    assert host.status is ProbeStatus.OK and host.reason is None
    (proc,) = host.processes
    assert (proc.pid, proc.name, proc.user, proc.container_id, proc.env_name, proc.env_owner) == (
        455,
        "python3",
        "root",
        CID,
        "alice-train",
        "alice",
    )
    assert host.processes_on(host.gpus[0].uuid) == (proc,)
    assert host.gpu(host.gpus[0].uuid) == host.gpus[0] and host.gpu("GPU-nope") is None


@pytest.mark.parametrize(
    "cgroup",
    [
        f"0::/system.slice/docker-{CID}.scope",  # cgroup v2, systemd driver
        f"0::/docker/{CID}",  # cgroup v2, cgroupfs driver
        f"12:memory:/docker/{CID} 11:cpu:/docker/{CID} 1:name=systemd:/docker/{CID}",  # v1
    ],
)
def test_cgroup_forms(cgroup: str) -> None:
    assert probe.parse_cgroups(f"455 {cgroup} \n") == {455: CID}


@pytest.mark.parametrize(
    "cgroup",
    ["0::/user.slice/user-1000.slice/session-3.scope", "4:memory:/process_api/52def2be81ee609422b6c9caf0eb393d", ""],
)
def test_cgroups_outside_docker(cgroup: str) -> None:
    assert probe.parse_cgroups(f"455 {cgroup}\n") == {}


@pytest.mark.parametrize(
    ("text", "status", "unknown"),
    [
        # Real: docker CLI 28.2.2 with no daemon, captured on this machine (exit 1).
        (
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n",
            1,
            "the Docker daemon is not running",
        ),
        (
            "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock\n",
            1,
            "the SSH user may not use the Docker daemon (permission denied on its socket)",
        ),
        ("", 127, None),  # docker not installed: no environment there either
        ("1700000000\nsomething else went wrong\n", 1, "docker ps failed: something else went wrong"),
    ],
)
def test_docker_unavailable_leaves_labels_unknown(text: str, status: int, unknown: str | None) -> None:
    stdout = (
        section("gpus", GPUS)
        + section("apps", APPS)
        + section("owners", "  455 alice\n")
        + section("cgroups", f"455 0::/docker/{CID}\n")
        + section("containers", text, status)
        + f"{M} end\n"
    )
    host = probe.parse_probe("gpu1", result(stdout))
    assert host.status is ProbeStatus.OK
    (proc,) = host.processes
    assert (proc.user, proc.container_id, proc.env_name, proc.env_owner) == ("alice", CID, None, None)
    # Issue 11 #10: which GPUs forge environments hold is unknown, so none of them is free
    assert host.holds_unknown == unknown
    lax = FreePolicy(max_memory_used_mib=10**9, max_utilization_pct=100, max_foreign_processes=10)
    assert [v.free for v in assess(host, policy=lax, me="alice")] == [unknown is None] * len(host.gpus)
    assert bool(select([host], count=1, policy=lax, me="alice")) == (unknown is None)


def ctr(
    cid: str,
    *,
    state: str = "running",
    created: str = "2025-11-28 19:00:00 +0000 UTC",
    env: str = "",
    owner: str = "",
    gpus: str = "",
    claim: str = "",
    claim_env: str = "",
    claim_owner: str = "",
) -> str:
    """One line of `docker ps --format DOCKER_FORMAT`, as docker prints it."""
    values = (state, created, env, owner, gpus, claim, claim_env, claim_owner)
    return cid + " " + " ".join(json.dumps(v) for v in values) + "\n"


def test_docker_format_matches_the_parser() -> None:
    assert probe.DOCKER_FORMAT.startswith("{{.ID}} {{json .State}} {{json .CreatedAt}}")
    for label in ("forge.env", "forge.owner", "forge.gpus", "forge.claim", "forge.claim.env", "forge.claim.owner"):
        assert f'{{{{json (.Label "{label}")}}}}' in probe.DOCKER_FORMAT


def test_parse_containers_skips_garbage_and_empty_labels() -> None:
    text = (
        "1764358000\n"
        + ctr(CID, env="env")
        + "not a container line\n"
        + f'{CID2} "running" "unterminated\n'
        + ctr("ab" * 32, env="x", owner="y", gpus="GPU-1,GPU-2", created="garbage")
    )
    now, found = probe.parse_containers(text)
    assert now == 1764358000
    assert set(found) == {CID, "ab" * 32}
    assert (found[CID].env, found[CID].owner, found[CID].gpus) == ("env", None, ())
    c = found["ab" * 32]
    assert (c.env, c.owner, c.gpus, c.created) == ("x", "y", ("GPU-1", "GPU-2"), None)
    assert found[CID].created == 1764356400.0  # 2025-11-28 19:00:00 UTC


G0, G1, G2 = "GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000", "GPU-cc"


def _gpus() -> tuple[Any, ...]:
    from forge.gpu.nvsmi import parse_gpus

    return parse_gpus(
        "".join(
            f"{i}, {u}, H200, 0, 100, 0, 100, 0, 0, 30, 70, 700, Default, Disabled\n"
            for i, u in enumerate((G0, G1, G2))
        )
    )


@pytest.mark.parametrize(
    ("lines", "held"),
    [
        # an environment's container holds its GPUs, by UUID or by index
        ([ctr(CID, env="dev", owner="alice", gpus=f"{G0}")], {G0: ("dev", "alice", "container")}),
        (
            [ctr(CID, env="dev", owner="alice", gpus="1,2")],
            {G1: ("dev", "alice", "container"), G2: ("dev", "alice", "container")},
        ),
        # a stopped one holds nothing; an unknown GPU is ignored
        ([ctr(CID, state="exited", env="dev", gpus=G0)], {}),
        ([ctr(CID, env="dev", gpus="GPU-elsewhere")], {}),
        # a fresh claim holds its GPU before its container exists
        (
            [
                ctr(
                    CID,
                    state="created",
                    created="2025-11-28 19:00:00 +0000 UTC",
                    claim=G1,
                    claim_env="e",
                    claim_owner="b",
                )
            ],
            {G1: ("e", "b", "claim")},
        ),
        # an old claim without its environment is stale: nothing held
        ([ctr(CID, state="created", created="2025-11-28 18:00:00 +0000 UTC", claim=G1, claim_env="e")], {}),
        # an old claim whose environment exists still holds
        (
            [
                ctr(CID, state="created", created="2025-11-28 18:00:00 +0000 UTC", claim=G1, claim_env="e"),
                ctr(CID2, env="e", gpus=G1),
            ],
            {G1: ("e", None, "container")},
        ),
    ],
)
def test_holds(lines: list[str], held: dict[str, tuple[str, str | None, str]]) -> None:
    now, containers = probe.parse_containers("1764356500\n" + "".join(lines))  # 19:01:40 UTC
    got = {h.gpu_uuid: (h.env, h.owner, h.kind) for h in probe.holds(_gpus(), containers, now)}
    assert got == held


def test_parse_owners_long_names_and_noise() -> None:
    text = (
        "  436 alice    python3\n  437 root     my worker ?x\n 9999 a-very-long-user-name-from-ldap\nerror: garbage\n"
    )
    assert probe.parse_owners(text) == {
        436: probe.Owner("alice", "python3"),
        437: probe.Owner("root", "my worker ?x"),  # a name may hold spaces; ps prints a control character as ?
        9999: probe.Owner("a-very-long-user-name-from-ldap", ""),
    }


@pytest.mark.parametrize(
    "case",
    [c for c in json.loads((EDGE / "cases.json").read_text()) if c["kind"] == "failure"],
    ids=lambda c: c["file"],
)
def test_every_failure_fixture_through_the_probe(case: dict[str, Any]) -> None:
    stdout = section("gpus", (EDGE / case["file"]).read_text(), case["exit_status"]) + f"{M} end\n"
    host = probe.parse_probe("gpu1", result(stdout))
    assert host.status == ProbeStatus(case["expect"]["status"])
    assert host.reason and host.gpus == () and host.processes == ()


def test_inforom_warning_still_gives_gpus() -> None:
    text = (EDGE / "inforom_warning_nounits.csv").read_text()
    stdout = section("gpus", text, 14) + section("apps", "") + f"{M} end\n"
    host = probe.parse_probe("gpu1", result(stdout))
    assert host.status is ProbeStatus.OK and len(host.gpus) == 1


def test_empty_gpu_list_is_no_gpus() -> None:
    host = probe.parse_probe("gpu1", result(section("gpus", "") + f"{M} end\n"))
    assert host.status is ProbeStatus.NO_GPUS


def test_garbage_gpu_output_is_error() -> None:
    host = probe.parse_probe("gpu1", result(section("gpus", "0, GPU-x\n") + f"{M} end\n"))
    assert host.status is ProbeStatus.ERROR and "unexpected nvidia-smi output" in (host.reason or "")


def test_apps_failure_keeps_gpus_but_is_error() -> None:
    stdout = section("gpus", GPUS) + section("apps", "Unable to query processes\n", 255) + f"{M} end\n"
    host = probe.parse_probe("gpu1", result(stdout))
    assert host.status is ProbeStatus.ERROR and len(host.gpus) == 1
    assert "Unable to query processes" in (host.reason or "")


def test_script_cut_short_is_error() -> None:
    host = probe.parse_probe("gpu1", result(f"{M} gpus\n" + GPUS, exit_status=255, stderr="Connection reset\n"))
    assert host.status is ProbeStatus.ERROR and "Connection reset" in (host.reason or "")


def test_no_markers_at_all_is_error() -> None:
    host = probe.parse_probe("gpu1", result("", exit_status=127, stderr="sh: not found\n"))
    assert host.status is ProbeStatus.ERROR and "127" in (host.reason or "")


def test_missing_optional_sections_leave_fields_none() -> None:
    host = probe.parse_probe("gpu1", result(section("gpus", GPUS) + section("apps", APPS) + f"{M} end\n"))
    assert host.status is ProbeStatus.OK
    assert host.processes[0].user is None and host.processes[0].container_id is None
    assert host.processes[0].name == ""


def test_split_sections_ignores_text_outside_sections() -> None:
    stdout = "motd noise\n" + section("gpus", "a\nb\n", 3) + "stray\n" + f"{M} end\n\n  \n"
    assert probe.split_sections(stdout) == {"gpus": probe.Section("a\nb\n", 3)}


# ------------------------------------------- marker lines a host's output could hold
# nvidia-smi prints a process name raw, line breaks and all: when forge asked for names, one
# could put marker lines into the apps section. forge no longer asks (names come from ps), and
# the splitter still refuses a marker out of place, wherever it comes from.

OWNERS = section("owners", "  455 root\n")
CGROUPS = section("cgroups", f"455 0::/system.slice/docker-{CID}.scope \n")
CONTAINERS = section("containers", "1764358000\n" + ctr(CID, env="alice-train", owner="alice"))
UUID = APPS.split(", ")[-1].strip()  # the fixture's GPU


def full(apps: str = APPS) -> str:
    """A whole answer of the probe, with ``apps`` as the process query's output."""
    return section("gpus", GPUS) + section("apps", apps) + OWNERS + CGROUPS + CONTAINERS + f"{M} end\n"


def app_row(pid: int, name: str) -> str:
    """nvidia-smi's row for a process called ``name`` (printed raw, line breaks and all)."""
    return f"{pid}, {name}, 100, {UUID}\n"


# Process names another user of the host can choose (the trailing space or line break puts
# nvidia-smi's next cell off the marker's word).
FAKE_TAIL = f"{M} owners\n455 mallory\n{M} status 0\n{M} cgroups\n{M} status 0\n{M} containers\n{M} status 0\n"
INJECTED_NAMES = {
    "end": f"x\n{M} end ",
    "end-then-rows": f"x\n{M} end\n9999, y",
    "status-owners": f"x\n{M} status 0\n{M} owners\n123 alice",
    "status-owners-row": f"x\n{M} status 0\n{M} owners\n123 alice\n9999, y",
    "whole-fake-tail": f"evil, 1, {UUID}\n{M} status 0\n{FAKE_TAIL}{M} end\n9999, y",
    "unknown-section": f"x\n{M} gpu-list\n",
    "carriage-return": f"x\r{M} end ",  # str.splitlines breaks lines at \\r too
}


@pytest.mark.parametrize("name", INJECTED_NAMES.values(), ids=INJECTED_NAMES.keys())
def test_a_marker_line_in_a_process_name_is_refused(name: str) -> None:
    stdout = full(APPS + app_row(456, name))
    with pytest.raises(probe.ProbeParseError, match="marker line out of place"):
        probe.split_sections(stdout)
    host = probe.parse_probe("gpu1", result(stdout))
    assert host.status is ProbeStatus.ERROR and host.gpus == () and host.processes == ()
    reason = host.reason or ""
    assert "marker line out of place" in reason and "none of the output is trusted" in reason
    for untrusted in ("mallory", "alice", "evil", "9999", "gpu-list", M):
        assert untrusted not in reason  # never the host's text


def test_a_forged_tail_does_not_replace_the_real_sections() -> None:
    """What the old parser fell for: a name that closes the apps section, prints owners,
    cgroups and containers of its own, then ``end``, so the real ones were never read."""
    stdout = full(APPS + app_row(456, INJECTED_NAMES["whole-fake-tail"]))
    host = probe.parse_probe("gpu1", result(stdout))
    assert host.status is ProbeStatus.ERROR
    assert all(p.user != "mallory" for p in host.processes)


@pytest.mark.parametrize(
    ("stdout", "what"),
    [
        (f"{M} status 0\n" + full(), "status line with no section open"),
        (section("gpus", GPUS) + f"{M} status 0\n" + section("apps", APPS), "status line with no section open"),
        (section("gpus", GPUS) + section("gpus", GPUS), "second 'gpus' section"),
        (full().replace(f"{M} end\n", "") + OWNERS, "second 'owners' section"),
        (section("gpus", GPUS) + OWNERS, "'owners' section where 'apps' belongs"),
        (section("apps", APPS), "'apps' section where 'gpus' belongs"),
        (section("gpus", GPUS) + section("status", ""), "status line with no section open"),
        (section("gpus", GPUS) + section("apps\x1b[2J", ""), "section of unknown name"),
        (section("gpus", GPUS) + f"{M} \n", "section of unknown name"),
        (f"{M} gpus\n{GPUS}{M} apps\n", "inside the 'gpus' section"),
        (f"{M} gpus\n{GPUS}{M} end\n", "inside the 'gpus' section"),
        (full() + f"{M} end\n", "text after the end marker"),
        (full() + f"{M} status 0\n", "text after the end marker"),
        (full() + "455, python3, 1, GPU-x\n", "text after the end marker"),
        (section("gpus", GPUS) + f"{M} end\n" + section("apps", APPS), "text after the end marker"),
    ],
)
def test_split_sections_refuses_marker_lines_out_of_order(stdout: str, what: str) -> None:
    with pytest.raises(probe.ProbeParseError, match=re.escape(what)):
        probe.split_sections(stdout)


def test_real_fixture_output_parses_as_before() -> None:
    sections = probe.split_sections("motd\n" + full() + "\n")
    assert list(sections) == list(probe.SECTIONS)
    assert sections["gpus"] == probe.Section(GPUS, 0) and sections["apps"] == probe.Section(APPS, 0)
    assert sections["owners"] == probe.Section("  455 root\n", 0)
    assert sections["containers"].text.startswith("1764358000\n") and sections["containers"].exit_status == 0
    host = probe.parse_probe("gpu1", result(full()))
    assert host.status is ProbeStatus.OK and [(p.pid, p.user) for p in host.processes] == [(455, "root")]
    mig_gpus = (ROOT / "tests" / "fixtures" / "nvidia-smi" / "h200-mig-driver590" / "query_gpu_load.csv").read_text()
    early = section("gpus", mig_gpus, 15) + f"{M} end\n"  # the script stops after a failed GPU query
    assert probe.split_sections(early) == {"gpus": probe.Section(mig_gpus, 15)}


def test_output_cut_short_still_parses() -> None:
    whole = full().splitlines(keepends=True)
    for n in range(len(whole)):  # cut after every line: a prefix of the sections, never an error
        sections = probe.split_sections("".join(whole[:n]))
        assert list(sections) == list(probe.SECTIONS[: len(sections)])
    cut = f"{M} gpus\n{GPUS}{M} status 0\n{M} apps\n{APPS}"
    assert probe.split_sections(cut) == {"gpus": probe.Section(GPUS, 0), "apps": probe.Section(APPS, None)}
    host = probe.parse_probe("gpu1", result(cut, exit_status=255, stderr="Connection reset\n"))
    assert host.status is ProbeStatus.ERROR and len(host.gpus) == 1  # as before: the apps section never closed
    assert "could not list GPU processes" in (host.reason or "")


@needs_tools
def test_real_script_a_process_name_with_line_breaks_forges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose name (for nvidia-smi: its path; for ps: its comm) holds line breaks, a
    forged CSV row and marker lines: the probe lists that one process, owned by its real user,
    and its name as ps escapes it."""
    import subprocess
    import sys

    me = pwd.getpwuid(os.getuid()).pw_name
    code = "import sys, time; open('/proc/self/comm', 'w').write(sys.argv[1]); print(flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code, f"ev\n{M} end"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"\n"  # comm is set
        forged = INJECTED_NAMES["whole-fake-tail"] + f"\n{os.getpid()}, 1, {U1}"  # a row naming another pid
        state = _state([{"pid": child.pid, "name": forged, "used_memory_mib": 1, "gpu_uuid": U0}])
        host = probe.probe_host(_session(monkeypatch, _host(tmp_path, state)), timeout=30)
    finally:
        child.kill()
        child.wait()
    assert host.status is ProbeStatus.OK, host.reason
    (proc,) = host.processes
    assert (proc.pid, proc.gpu_uuid, proc.user) == (child.pid, U0, me)
    assert proc.name == f"ev?{M}"[:15]  # the kernel keeps 15 bytes of a comm; ps prints the break as ?


# ------------------------------------------------------------------- hostile output, number by number

HOSTILE_NUMBERS = (
    "9" * 400,
    "9" * 5000,
    "\u00b2",
    "\u0663",
    "nan",
    "inf",
    "1e999",
    "-1",
    "",
    "\x1b[2J",
    "[N/A]",
    "1_0",
)


def _each_number_replaced(text: str) -> list[str]:
    """``text`` once for every run of digits in it and every hostile value put in its place."""
    return [text[: m.start()] + value + text[m.end() :] for m in re.finditer(r"\d+", text) for value in HOSTILE_NUMBERS]


def test_no_number_a_host_prints_makes_the_parser_raise() -> None:
    """A GPU host is shared: whatever its tools print, parse_probe answers (status error at
    worst) instead of raising, for each number of a real probe's output replaced in turn."""
    stdout = (
        section("gpus", GPUS)
        + section("apps", APPS)
        + section("owners", "  455 root\n")
        + section("cgroups", f"455 0::/system.slice/docker-{CID}.scope \n")
        + section("containers", "1764358000\n" + ctr(CID, env="alice-train", owner="alice"))
        + f"{M} end\n"
    )
    variants = _each_number_replaced(stdout)
    assert len(variants) > 1000
    statuses = {probe.parse_probe("gpu1", result(v)).status for v in variants}
    assert {ProbeStatus.OK, ProbeStatus.ERROR} <= statuses  # a bad number: an answer, not an exception


def test_no_number_in_a_mig_answer_makes_the_parser_raise() -> None:
    state = lab_gpus.with_slice_holder(lab_gpus.with_mig(fake_gpu.default_state("gpu1"), [0]), 0, 3, 4242, 9000)
    fmt = "--format=csv,noheader,nounits"
    gpu_csv, _ = fake_gpu.run(["--query-gpu=" + ",".join(nvsmi.GPU_FIELDS), fmt], state)
    apps_csv, _ = fake_gpu.run(["--query-compute-apps=" + ",".join(nvsmi.APP_FIELDS), fmt], state)
    stdout = section("gpus", gpu_csv) + section("apps", apps_csv) + f"{M} end\n"
    listed, _ = fake_gpu.run(["-L"], state)
    query, _ = fake_gpu.run(["-q"], state)
    answer = f"{listed}{mig.MARKER} 0\n{query}{mig.MARKER} 0\n"
    assert len(probe.parse_probe("gpu1", result(stdout), result(answer)).gpus) == 9  # 8 GPUs, one in instances
    variants = _each_number_replaced(answer)
    assert len(variants) > 1000
    for v in variants:
        assert probe.parse_probe("gpu1", result(stdout), result(v)).status is ProbeStatus.OK

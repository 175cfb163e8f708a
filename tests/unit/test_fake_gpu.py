"""The replayed nvidia-smi: byte-for-byte equal to the real H200 captures, and parseable."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forge.gpu import nvsmi
from forge.gpu.model import ProbeStatus

ROOT = Path(__file__).parent.parent.parent
FAKE = ROOT / "forge" / "lab" / "fake_gpu.py"
H200 = ROOT / "tests" / "fixtures" / "nvidia-smi" / "h200-driver580"
SYSTEM_PYTHON = "/usr/bin/python3"
UUID = "GPU-a267d29a-9786-72fd-1e44-bf85190413fb"
GPU_QUERY = "--query-gpu=" + ",".join(nvsmi.GPU_FIELDS)
APPS5 = "--query-compute-apps=pid,process_name,used_gpu_memory,gpu_uuid,gpu_bus_id"
APPS4 = "--query-compute-apps=pid,process_name,used_gpu_memory,gpu_uuid"  # as captured


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("fake_gpu_under_test", FAKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake = _load()


def h200(
    *,
    used: int,
    free: int,
    util: int,
    mem_util: int,
    temp: int,
    draw: float,
    procs: bool,
    stamp: str | None = None,
) -> dict[str, Any]:
    """The captured H200's state at one moment (values read off the capture)."""
    state: dict[str, Any] = {
        "mode": "ok",
        "gpus": [
            {
                "index": 0,
                "uuid": UUID,
                "name": "NVIDIA H200",
                "pci_bus_id": "00000000:00:06.0",
                "memory_total_mib": 143771,
                "memory_used_mib": used,
                "memory_free_mib": free,
                "utilization_gpu_pct": util,
                "utilization_memory_pct": mem_util,
                "temperature_c": temp,
                "power_draw_w": draw,
                "power_limit_w": 700.0,
                "compute_mode": "Default",
                "mig_mode": "Disabled",
            }
        ],
        "processes": [{"pid": 455, "name": "python3", "used_memory_mib": 41834, "gpu_uuid": UUID}] if procs else [],
    }
    if stamp:
        state["timestamp"] = stamp
    return state


BUSY = {"used": 41843, "free": 101314, "util": 100, "mem_util": 23, "temp": 59, "procs": True}
IDLE = {"used": 0, "free": 143156, "util": 0, "mem_util": 0, "temp": 34, "procs": False}

BYTE_FOR_BYTE = [
    ("query_gpu_busy.csv", h200(**BUSY, draw=687.71), [GPU_QUERY, "--format=csv"]),
    ("query_gpu_nounits_busy.csv", h200(**BUSY, draw=688.24), [GPU_QUERY, "--format=csv,noheader,nounits"]),
    ("query_gpu_idle.csv", h200(**IDLE, draw=80.5), [GPU_QUERY, "--format=csv"]),
    ("query_gpu_nounits_idle.csv", h200(**IDLE, draw=77.9), [GPU_QUERY, "--format=csv,noheader,nounits"]),
    ("query_apps_busy.csv", h200(**BUSY, draw=0), [APPS5, "--format=csv"]),
    ("query_apps_idle.csv", h200(**IDLE, draw=0), [APPS5, "--format=csv"]),
    ("query_apps_nounits_busy.csv", h200(**BUSY, draw=0), [APPS4, "--format=csv,noheader,nounits"]),
    ("query_apps_nounits_idle.csv", h200(**IDLE, draw=0), [APPS4, "--format=csv,noheader,nounits"]),
    # The plain tables were taken at other moments: 58 C / 688 W busy, 84 W idle.
    ("plain_busy.txt", h200(**{**BUSY, "temp": 58}, draw=687.71, stamp="Sat Nov 28 17:35:45 2026"), []),
    ("plain_idle.txt", h200(**IDLE, draw=84.0, stamp="Sat Nov 28 17:35:34 2026"), []),
]


@pytest.mark.parametrize(("name", "state", "args"), BYTE_FOR_BYTE, ids=[c[0] for c in BYTE_FOR_BYTE])
def test_byte_for_byte(name: str, state: dict[str, Any], args: list[str]) -> None:
    text, status = fake.run(args, state)
    assert status == 0
    assert text == (H200 / name).read_text(encoding="utf-8")


def test_plain_table_two_processes() -> None:
    uuid = "GPU-2f2b2d45-d0ca-b664-7328-f7270e6ad7ea"
    state = h200(**{**BUSY, "used": 12771, "temp": 52}, draw=605.0, stamp="Sat Nov 28 18:25:22 2026")
    state["gpus"][0]["uuid"] = uuid
    state["processes"] = [
        {"pid": 436, "name": "/opt/torch/.venv/bin/python3", "used_memory_mib": 8938, "gpu_uuid": uuid},
        {"pid": 437, "name": "/opt/torch/.venv/bin/python3", "used_memory_mib": 3818, "gpu_uuid": uuid},
    ]
    text, _ = fake.run([], state)
    assert text == (H200 / "plain_two_processes.txt").read_text(encoding="utf-8")


def test_unknown_field_matches_meta() -> None:
    text, status = fake.run(["--query-gpu=index,bogus.field", "--format=csv"], fake.default_state())
    assert (text, status) == ('Field "bogus.field" is not a valid field to query.\n\n', 2)
    assert text.rstrip("\n") + "\n\nrc=2" in (H200 / "meta.txt").read_text()


@pytest.mark.parametrize(
    ("mode", "expect", "status", "probe"),
    [
        ("no_devices", "No devices were found\n", 6, ProbeStatus.NO_GPUS),
        (
            "driver_not_loaded",
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.\n",
            9,
            ProbeStatus.DRIVER_ERROR,
        ),
    ],
)
def test_failure_modes(mode: str, expect: str, status: int, probe: ProbeStatus) -> None:
    state = {**fake.default_state(), "mode": mode}
    for args in ([GPU_QUERY, "--format=csv,noheader,nounits"], [APPS4, "--format=csv"], []):
        assert fake.run(args, state) == (expect, status)
    failure = nvsmi.classify_failure(status, expect)
    assert failure is not None and failure.status is probe


@pytest.mark.parametrize(
    "args",
    [
        [GPU_QUERY],  # no --format
        [GPU_QUERY, APPS4, "--format=csv"],  # two queries
        [GPU_QUERY, "--format=json"],
        ["--format=csv"],
    ],
)
def test_invalid_combinations_exit_2(args: list[str]) -> None:
    text, status = fake.run(args, fake.default_state())
    assert status == 2 and text


def test_default_state_is_four_idle_h200s() -> None:
    state = fake.default_state()
    gpus = nvsmi.parse_gpus(fake.run([GPU_QUERY, "--format=csv,noheader,nounits"], state)[0])
    assert len(gpus) == 4 and len({g.uuid for g in gpus}) == 4 and len({g.pci_bus_id for g in gpus}) == 4
    assert all(g.name == "NVIDIA H200" and g.memory_used_mib == 0 and not g.mig_enabled for g in gpus)
    assert all(g.uuid.startswith("GPU-") and len(g.uuid) == 40 for g in gpus)
    assert fake.run([APPS4, "--format=csv,noheader,nounits"], state) == ("", 0)
    json.dumps(state)  # serializable as a state file


def test_none_and_strings_pass_through() -> None:
    state = fake.default_state()
    gpu = state["gpus"][0]
    gpu.update(utilization_gpu_pct=None, power_draw_w="[Not Supported]", mig_mode="Enabled")
    line = fake.run([GPU_QUERY, "--format=csv"], state)[0].splitlines()[1]
    assert ", [N/A], " in line and ", [Not Supported], " in line and line.endswith(", Enabled")
    parsed = nvsmi.parse_gpus(fake.run([GPU_QUERY, "--format=csv"], state)[0])[0]
    assert parsed.utilization_gpu_pct is None and parsed.power_draw_w is None and parsed.mig_enabled


def test_fake_is_standalone() -> None:
    source = FAKE.read_text()
    assert source.startswith("#!/usr/bin/python3\n")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                top = module.split(".")[0]
                assert top == "__future__" or top in sys.stdlib_module_names, module


# -------------------------------------------------------------------- round trip, randomized

_value = st.one_of(st.none(), st.integers(min_value=0, max_value=200000))
_pct = st.one_of(st.none(), st.integers(min_value=0, max_value=100))
_watts = st.one_of(st.none(), st.floats(min_value=0, max_value=2000, allow_nan=False).map(lambda w: round(w, 2)))
_name = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="[,"), min_size=1).map(
    lambda s: s.strip() or "x"
)


@st.composite
def states(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(min_value=1, max_value=8))
    gpus = []
    for i in range(n):
        gpus.append(
            {
                "index": i,
                "uuid": f"GPU-{i:08x}-0000-0000-0000-{draw(st.integers(0, 2**48 - 1)):012x}",
                "name": draw(st.sampled_from(["NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA GB10"])),
                "pci_bus_id": f"00000000:{16 + i:02X}:00.0",
                "memory_total_mib": draw(_value),
                "memory_used_mib": draw(_value),
                "utilization_gpu_pct": draw(_pct),
                "utilization_memory_pct": draw(_pct),
                "temperature_c": draw(_pct),
                "power_draw_w": draw(_watts),
                "power_limit_w": draw(_watts),
                "compute_mode": draw(st.sampled_from(["Default", "Exclusive_Process", "Prohibited"])),
                "mig_mode": draw(st.sampled_from(["Enabled", "Disabled", None])),
            }
        )
    procs = [
        {
            "pid": draw(st.integers(1, 4_000_000)),
            "name": draw(st.one_of(_name, st.just("/opt/a, b/python3"))),
            "used_memory_mib": draw(_value),
            "gpu_uuid": draw(st.sampled_from([g["uuid"] for g in gpus])),
        }
        for _ in range(draw(st.integers(0, 6)))
    ]
    return {"mode": "ok", "gpus": gpus, "processes": procs}


@settings(max_examples=150, deadline=None)
@given(state=states(), fmt=st.sampled_from(["csv", "csv,noheader", "csv,nounits", "csv,noheader,nounits"]))
def test_parse_of_fake_round_trips(state: dict[str, Any], fmt: str) -> None:
    gpus = nvsmi.parse_gpus(fake.run([GPU_QUERY, f"--format={fmt}"], state)[0])
    assert len(gpus) == len(state["gpus"])
    for gpu, want in zip(gpus, state["gpus"], strict=True):
        assert (gpu.index, gpu.uuid, gpu.name, gpu.pci_bus_id) == (
            want["index"],
            want["uuid"],
            want["name"],
            want["pci_bus_id"],
        )
        assert gpu.memory_used_mib == want["memory_used_mib"]
        assert gpu.utilization_gpu_pct == want["utilization_gpu_pct"]
        assert gpu.power_draw_w == want["power_draw_w"]
        assert gpu.mig_mode == want["mig_mode"]
    procs = nvsmi.parse_apps(fake.run([APPS4, f"--format={fmt}"], state)[0], APPS4.split("=")[1].split(","))
    got = sorted(((p.pid, p.name, p.used_memory_mib, p.gpu_uuid) for p in procs), key=repr)
    want_procs = sorted(
        ((p["pid"], p["name"], p["used_memory_mib"], p["gpu_uuid"]) for p in state["processes"]), key=repr
    )
    assert got == want_procs


# ------------------------------------------------------------ as a program, under /usr/bin/python3

needs_system_python = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no /usr/bin/python3")


def _run_fake(tmp_path: Path, state: dict[str, Any] | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if state is not None:
        path = tmp_path / "gpus.json"
        path.write_text(json.dumps(state))
        env["FORGE_LAB_GPU_STATE"] = str(path)
    return subprocess.run(
        [SYSTEM_PYTHON, str(FAKE), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@needs_system_python
@pytest.mark.parametrize(("name", "state", "args"), BYTE_FOR_BYTE[:8], ids=[c[0] for c in BYTE_FOR_BYTE[:8]])
def test_subprocess_byte_for_byte(tmp_path: Path, name: str, state: dict[str, Any], args: list[str]) -> None:
    done = _run_fake(tmp_path, state, *args)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (H200 / name).read_text(encoding="utf-8")


@needs_system_python
def test_subprocess_modes_and_errors(tmp_path: Path) -> None:
    state = {**fake.default_state(), "mode": "no_devices"}
    done = _run_fake(tmp_path, state, GPU_QUERY, "--format=csv,noheader,nounits")
    assert (done.returncode, done.stdout) == (6, "No devices were found\n")
    done = _run_fake(tmp_path, {**state, "mode": "driver_not_loaded"})
    assert done.returncode == 9 and "couldn't communicate with the NVIDIA driver" in done.stdout
    done = _run_fake(tmp_path, fake.default_state(), "--query-gpu=nope", "--format=csv")
    assert (done.returncode, done.stdout) == (2, 'Field "nope" is not a valid field to query.\n\n')


@needs_system_python
def test_subprocess_unreadable_state(tmp_path: Path) -> None:
    done = subprocess.run(
        [SYSTEM_PYTHON, str(FAKE)],
        env={"PATH": "/usr/bin:/bin", "FORGE_LAB_GPU_STATE": str(tmp_path / "missing.json")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 255 and done.stdout == "" and "cannot read the GPU state" in done.stderr


@needs_system_python
def test_subprocess_plain_table_without_state_file(tmp_path: Path) -> None:
    if os.path.exists(fake.DEFAULT_STATE_PATH):
        pytest.skip("a lab state file exists on this machine")
    done = _run_fake(tmp_path, None)
    assert done.returncode == 0
    assert done.stdout.count("NVIDIA H200") == 4 and "No running processes found" in done.stdout

"""nvidia-smi parsers against real captures (H200, driver 580) and the edge-case fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forge.gpu import nvsmi
from forge.gpu.model import ProbeStatus

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvidia-smi"
H200 = FIXTURES / "h200-driver580"
EDGE = FIXTURES / "edge-cases"
UUID = "GPU-a267d29a-9786-72fd-1e44-bf85190413fb"
#: The process fields the captures were asked with (forge asks for these less process_name).
CAPTURED_APP_FIELDS = ("pid", "process_name", "used_gpu_memory", "gpu_uuid")
CASES: list[dict[str, Any]] = json.loads((EDGE / "cases.json").read_text())


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# ------------------------------------------------------------------------ real H200 captures


@pytest.mark.parametrize("name", ["query_gpu_busy.csv", "query_gpu_nounits_busy.csv"])
def test_busy_gpu_capture(name: str) -> None:
    (gpu,) = nvsmi.parse_gpus(read(H200 / name))
    assert gpu.index == 0
    assert gpu.uuid == UUID
    assert gpu.name == "NVIDIA H200"
    assert gpu.pci_bus_id == "00000000:00:06.0"
    assert (gpu.memory_total_mib, gpu.memory_used_mib, gpu.memory_free_mib) == (143771, 41843, 101314)
    assert (gpu.utilization_gpu_pct, gpu.utilization_memory_pct) == (100, 23)
    assert gpu.temperature_c == 59
    assert gpu.power_limit_w == 700.0
    assert gpu.power_draw_w in (687.71, 688.24)  # two calls, two samples
    assert (gpu.compute_mode, gpu.mig_mode, gpu.mig_enabled) == ("Default", "Disabled", False)


@pytest.mark.parametrize("name", ["query_gpu_idle.csv", "query_gpu_nounits_idle.csv"])
def test_idle_gpu_capture(name: str) -> None:
    (gpu,) = nvsmi.parse_gpus(read(H200 / name))
    assert (gpu.memory_used_mib, gpu.memory_free_mib, gpu.utilization_gpu_pct) == (0, 143156, 0)
    assert gpu.free_memory_mib == 143156  # reported free wins over total - used (143771)


@pytest.mark.parametrize("name", ["query_apps_busy.csv", "query_apps_nounits_busy.csv"])
def test_busy_apps_capture(name: str) -> None:
    # query_apps_busy.csv has a header and an extra gpu_bus_id column: the header keys the cells.
    (proc,) = nvsmi.parse_apps(read(H200 / name), CAPTURED_APP_FIELDS)
    assert (proc.pid, proc.name, proc.used_memory_mib, proc.gpu_uuid) == (455, "python3", 41834, UUID)
    assert proc.user is None and proc.container_id is None


@pytest.mark.parametrize("name", ["query_apps_idle.csv", "query_apps_nounits_idle.csv"])
def test_idle_apps_capture_header_only_or_empty(name: str) -> None:
    assert nvsmi.parse_apps(read(H200 / name)) == ()


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("== "):
            key = line[3:]
            out[key] = []
        else:
            out[key].append(line)
    return out


def test_two_processes_two_users_capture() -> None:
    sections = _sections(read(H200 / "two_processes_two_users.txt"))
    root = sections["as root"]
    gpu_fields = (
        "index,uuid,name,memory.total,memory.used,utilization.gpu,persistence_mode,pstate,driver_version,count"
    ).split(",")
    (gpu,) = nvsmi.parse_gpus("\n".join(root[0:2]) + "\n", gpu_fields)
    assert gpu.uuid == "GPU-2f2b2d45-d0ca-b664-7328-f7270e6ad7ea"
    assert gpu.memory_used_mib == 12771 and gpu.pci_bus_id is None and gpu.mig_mode is None
    with_units = nvsmi.parse_apps("\n".join(root[2:5]) + "\n", CAPTURED_APP_FIELDS)
    no_units = nvsmi.parse_apps("\n".join(root[5:7]) + "\n", CAPTURED_APP_FIELDS)
    assert with_units == no_units
    assert [(p.pid, p.name, p.used_memory_mib) for p in no_units] == [
        (436, "/opt/torch/.venv/bin/python3", 8938),
        (437, "/opt/torch/.venv/bin/python3", 3818),
    ]
    bob = sections["as bob (non-root, owns no process)"]
    assert nvsmi.parse_apps("\n".join(bob[0:3]) + "\n", CAPTURED_APP_FIELDS) == with_units


def test_meta_bad_field_is_an_error() -> None:
    meta = read(H200 / "meta.txt")
    assert 'Field "bogus.field" is not a valid field to query.' in meta
    failure = nvsmi.classify_failure(2, 'Field "bogus.field" is not a valid field to query.\n\n')
    assert failure is not None and failure.status is ProbeStatus.ERROR
    assert "status 2" in failure.reason and "bogus.field" in failure.reason


def test_field_lists_are_the_captured_ones() -> None:
    """The GPU fields are the captured list; the process fields are the captured ones less
    ``process_name``, the one cell another user writes (forge reads names from ps)."""
    readme = read(H200 / "README.md")
    assert ",".join(nvsmi.GPU_FIELDS) in readme
    assert ",".join(CAPTURED_APP_FIELDS) in readme
    assert nvsmi.APP_FIELDS == tuple(f for f in CAPTURED_APP_FIELDS if f != "process_name")
    help_gpu = read(H200 / "help_query_gpu.txt")
    for field in nvsmi.GPU_FIELDS:
        assert f'"{field}"' in help_gpu
    help_apps = read(H200 / "help_query_apps.txt")
    for field in nvsmi.APP_FIELDS:
        assert f'"{field}"' in help_apps


# ------------------------------------------------------------------------------ edge cases


def _ids(case: dict[str, Any]) -> str:
    return str(case["file"])


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "failure"], ids=_ids)
def test_failure_cases(case: dict[str, Any]) -> None:
    failure = nvsmi.classify_failure(case["exit_status"], read(EDGE / case["file"]))
    assert failure is not None
    assert failure.status == ProbeStatus(case["expect"]["status"])
    assert failure.reason


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "rows"], ids=_ids)
def test_rows_cases(case: dict[str, Any]) -> None:
    fields = case["fields"].split(",")
    rows = nvsmi.split_rows(read(EDGE / case["file"]), fields)
    values = [[None if nvsmi.is_not_available(v) else v for v in row.values()] for row in rows]
    expect = case["expect"]
    if "rows" in expect:
        assert values == expect["rows"]
    if "count" in expect:
        assert len(values) == expect["count"]
        assert values[0] == expect["first"]
    assert all(list(row) == [nvsmi.canonical_field(f) for f in fields] for row in rows)


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "gpus"], ids=_ids)
def test_gpu_cases(case: dict[str, Any]) -> None:
    text = read(EDGE / case["file"])
    assert nvsmi.classify_failure(case.get("exit_status", 0), text) is None
    gpus = nvsmi.parse_gpus(text, case["fields"].split(","))
    expect = case["expect"]
    assert len(gpus) == expect["count"]
    assert len({g.uuid for g in gpus}) == len(gpus)
    assert [g.index for g in gpus if g.mig_enabled] == expect.get("mig_enabled", [])
    assert [g.index for g in gpus if g.utilization_gpu_pct is None] == expect.get("utilization_none", [])
    assert [g.index for g in gpus if g.power_draw_w is None] == expect.get("power_draw_none", [])
    assert [g.index for g in gpus if g.power_limit_w is None] == expect.get("power_limit_none", [])


def test_eight_gpus_mixed_values() -> None:
    gpus = nvsmi.parse_gpus(read(EDGE / "h200x8_mixed_nounits.csv"))
    assert [g.index for g in gpus] == list(range(8))
    mig = gpus[5]
    assert mig.mig_mode == "Enabled" and mig.utilization_memory_pct is None and mig.memory_used_mib == 30208
    assert gpus[7].compute_mode == "Exclusive_Process"


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "apps"], ids=_ids)
def test_apps_cases(case: dict[str, Any]) -> None:
    procs = nvsmi.parse_apps(read(EDGE / case["file"]), case["fields"].split(","))
    expect = case["expect"]
    assert len(procs) == expect["count"]
    names = {str(p.pid): p.name for p in procs}
    for pid, name in expect["names"].items():
        assert names[pid] == name
    assert [p.pid for p in procs if p.used_memory_mib is None] == expect["memory_none"]
    assert len({p.gpu_uuid for p in procs}) == 4  # processes on several GPUs


def test_every_edge_file_is_described() -> None:
    described = {c["file"] for c in CASES}
    present = {p.name for p in EDGE.iterdir()} - {"README.md", "cases.json"}
    assert described == present
    readme = read(EDGE / "README.md")
    for case in CASES:
        assert f"`{case['file']}`" in readme
        assert case["provenance"] and case["source"]


# ------------------------------------------------------------------------------ the pieces


@pytest.mark.parametrize(
    ("value", "na"),
    [
        ("[N/A]", True),
        ("[Not Supported]", True),
        ("[Unknown Error]", True),
        ("[Insufficient Permissions]", True),
        ("N/A", True),
        ("", True),
        ("  ", True),
        ("0", False),
        ("Default", False),
        ("NVIDIA H200", False),
    ],
)
def test_is_not_available(value: str, na: bool) -> None:
    assert nvsmi.is_not_available(value) is na


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("memory.total [MiB]", "memory.total"),
        ("utilization.gpu [%]", "utilization.gpu"),
        ("power.draw [W]", "power.draw"),
        ("temperature.gpu", "temperature.gpu"),
        ("used_gpu_memory [MiB]", "used_gpu_memory"),
        ("used_memory", "used_gpu_memory"),
        ("gpu_name", "name"),
    ],
)
def test_canonical_field(header: str, field: str) -> None:
    assert nvsmi.canonical_field(header) == field


def test_process_name_with_comma_is_glued_back() -> None:
    text = "1, /a, b/c, d, 10, GPU-x\n"
    (proc,) = nvsmi.parse_apps(text, CAPTURED_APP_FIELDS)
    assert (proc.pid, proc.name, proc.used_memory_mib, proc.gpu_uuid) == (1, "/a, b/c, d", 10, "GPU-x")


def test_too_few_cells_is_a_parse_error() -> None:
    with pytest.raises(nvsmi.NvsmiParseError):
        nvsmi.parse_gpus("0, GPU-x, NVIDIA H200\n")


def test_non_number_is_a_parse_error() -> None:
    line = read(H200 / "query_gpu_nounits_idle.csv").replace(", 143771,", ", lots,")
    with pytest.raises(nvsmi.NvsmiParseError, match="memory.total"):
        nvsmi.parse_gpus(line)


def test_missing_uuid_is_a_parse_error() -> None:
    line = read(H200 / "query_gpu_nounits_idle.csv").replace(UUID, "[N/A]")
    with pytest.raises(nvsmi.NvsmiParseError, match="uuid"):
        nvsmi.parse_gpus(line)


def test_crlf_and_blank_lines_are_tolerated() -> None:
    text = "\r\n" + read(H200 / "query_gpu_nounits_busy.csv").replace("\n", "\r\n") + "\r\n"
    assert nvsmi.parse_gpus(text) == nvsmi.parse_gpus(read(H200 / "query_gpu_nounits_busy.csv"))


@pytest.mark.parametrize(
    ("exit_status", "output", "status"),
    [
        (0, "", ProbeStatus.NO_GPUS),
        (0, "0, GPU-x\n", None),
        (14, "WARNING: infoROM is corrupted at gpu 0000:00:1E.0\n0, GPU-x\n", None),
        (15, "", ProbeStatus.DRIVER_ERROR),
        (12, "", ProbeStatus.DRIVER_ERROR),
        (126, "sh: 1: nvidia-smi: Permission denied\n", ProbeStatus.ERROR),
        (3, "", ProbeStatus.ERROR),
        (0, "No devices were found\n", ProbeStatus.NO_GPUS),
    ],
)
def test_classify_failure_table(exit_status: int, output: str, status: ProbeStatus | None) -> None:
    failure = nvsmi.classify_failure(exit_status, output)
    assert (failure.status if failure else None) == status

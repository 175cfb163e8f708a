"""MIG instances from a real H200 capture (driver 590, tests/fixtures/nvidia-smi/h200-mig-driver590/):
the parsers, the instances as GPUs of their own, processes pointed at them, selection by memory,
and the lab's replayed nvidia-smi read back by the same parsers."""

from __future__ import annotations

from pathlib import Path

from forge.gpu import mig, nvsmi
from forge.gpu.model import Gpu, GpuProcess, HostGpus, ProbeStatus
from forge.gpu.policy import FreePolicy, assess, select
from forge.lab import fake_gpu, gpus
from forge.transport.base import CommandResult

MIG = Path(__file__).parent.parent / "fixtures" / "nvidia-smi" / "h200-mig-driver590"
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"


def _csv(name: str) -> tuple[str, list[str]]:
    text = (MIG / name).read_text()
    return text, [f.split(" [")[0].strip() for f in text.splitlines()[0].split(", ")]


def captured() -> tuple[tuple[Gpu, ...], tuple[GpuProcess, ...]]:
    gpu_text, gpu_fields = _csv("query_gpu_load.csv")
    app_text, app_fields = _csv("query_apps_load.csv")
    return nvsmi.parse_gpus(gpu_text, gpu_fields), nvsmi.parse_apps(app_text, app_fields)


def test_the_list_names_each_instance_with_its_profile_and_uuid() -> None:
    listed = mig.parse_list((MIG / "list.txt").read_text())
    assert [(d, p) for d, p, _ in listed[0]] == [
        (0, "1c.3g.71gb"), (1, "2c.3g.71gb"), (2, "2g.35gb"), (3, "1g.18gb"), (4, "1g.18gb")
    ]  # fmt: skip
    assert listed[0][3][2] == "MIG-00000003-0000-0000-0000-000000000003"


def test_the_query_gives_instance_ids_shared_memory_and_where_processes_run() -> None:
    (idle,) = mig.parse_query((MIG / "q_idle.txt").read_text())
    assert idle.bus_id == "00000000:83:00.0" and idle.processes == ()
    got = [(d.index, d.gpu_instance, d.compute_instance, d.memory_used_mib, d.memory_total_mib) for d in idle.devices]
    assert got == [
        (0, 2, 0, 22, 71424), (1, 2, 1, 22, 71424), (2, 3, 0, 17, 33280), (3, 9, 0, 9, 16384), (4, 10, 0, 9, 16384)
    ]  # fmt: skip
    (load,) = mig.parse_query((MIG / "q_load.txt").read_text())
    assert [(p.pid, p.gpu_instance, p.compute_instance) for p in load.processes] == [
        (12249, 2, 1), (12250, 2, 1), (12267, 2, 1)
    ]  # fmt: skip
    # the two compute instances of GPU instance 2 share its memory: both show it used
    assert [d.memory_used_mib for d in load.devices[:2]] == [16925, 16925]


def test_instances_become_gpus_and_processes_are_pointed_at_theirs() -> None:
    gpus_, procs = captured()
    (gpu,) = gpus_
    assert gpu.mig_enabled and gpu.utilization_gpu_pct is None
    query = (MIG / "q_load.txt").read_text()
    found = mig.instances(gpus_, (MIG / "list.txt").read_text(), query)
    assert [(g.label, g.mig_profile, g.free_memory_mib) for g in found] == [
        ("0/0", "1c.3g.71gb", 54499), ("0/1", "2c.3g.71gb", 54499), ("0/2", "2g.35gb", 33264),
        ("0/3", "1g.18gb", 16376), ("0/4", "1g.18gb", 16376),
    ]  # fmt: skip
    assert all(g.parent_uuid == UUID0 and g.utilization_gpu_pct is None and not g.mig_enabled for g in found)
    pointed = mig.point_processes(procs, gpus_, found, query)
    assert {p.gpu_uuid for p in pointed} == {"MIG-00000001-0000-0000-0000-000000000001"}
    # without the query's instances a process stays on its GPU
    assert {p.gpu_uuid for p in mig.point_processes(procs, gpus_, found, "")} == {UUID0}


def test_the_mig_script_output_is_split_by_its_markers() -> None:
    out = f"GPU 0: x\n{mig.MARKER} 0\n\n==NVSMI LOG==\n{mig.MARKER} 9\n"
    assert mig.split(out) == ("GPU 0: x\n", 0, "\n\n==NVSMI LOG==\n", 9)
    assert mig.split("garbage") == ("", None, "", None)


def host_of(gpus_: tuple[Gpu, ...], procs: tuple[GpuProcess, ...] = ()) -> HostGpus:
    return HostGpus("gpu1", ProbeStatus.OK, gpus=gpus_, processes=procs)


def test_a_slice_serves_a_one_gpu_request_by_memory_the_smallest_that_fits() -> None:
    gpus_, procs = captured()
    query = (MIG / "q_load.txt").read_text()
    found = mig.instances(gpus_, (MIG / "list.txt").read_text(), query)
    host = host_of((*gpus_, *found), mig.point_processes(procs, gpus_, found, query))
    verdicts = {v.gpu.label: (v.free, v.reason) for v in assess(host, policy=FreePolicy(), me="alice")}
    assert verdicts["0"] == (False, "split into MIG instances (listed after it)")
    assert verdicts["0/1"] == (False, "16925 MiB used (> 1024)")  # gpu_burn runs there
    assert verdicts["0/0"][0] is False  # it shares that memory
    assert verdicts["0/3"] == (True, "free")
    (cand,) = select([host], count=1, min_free_memory_mib=16000, me="alice")
    assert cand.gpu_uuids == ("MIG-00000003-0000-0000-0000-000000000003",)
    (bigger,) = select([host], count=1, min_free_memory_mib=20000, me="alice")
    assert bigger.gpu_uuids == ("MIG-00000002-0000-0000-0000-000000000002",)
    assert select([host], count=1, me="alice") == []  # a whole GPU asked: none here
    assert select([host], count=2, min_free_memory_mib=1000, me="alice") == []  # slices serve one-GPU requests


def test_the_labs_replayed_mig_gpu_reads_back_as_the_captured_one() -> None:
    state = gpus.with_mig(fake_gpu.default_state("gpu1"), [0])
    state = gpus.with_slice_holder(state, 0, 3, 4242, 9000)
    listed, _ = fake_gpu.run(["-L"], state)
    query, _ = fake_gpu.run(["-q"], state)
    fmt = "--format=csv,noheader,nounits"
    gpu_csv, _ = fake_gpu.run(["--query-gpu=" + ",".join(nvsmi.GPU_FIELDS), fmt], state)
    apps_csv, _ = fake_gpu.run(["--query-compute-apps=" + ",".join(nvsmi.APP_FIELDS), fmt], state)
    gpus_, procs = nvsmi.parse_gpus(gpu_csv), nvsmi.parse_apps(apps_csv)
    found = mig.instances(gpus_, listed, query)
    assert [(g.label, g.mig_profile, g.memory_total_mib) for g in found] == [
        ("0/0", "1c.3g.71gb", 71424), ("0/1", "2c.3g.71gb", 71424), ("0/2", "2g.35gb", 33280),
        ("0/3", "1g.18gb", 16384), ("0/4", "1g.18gb", 16384),
    ]  # fmt: skip
    assert found[3].memory_used_mib == 9 + 9000 and found[4].memory_used_mib == 9
    (proc,) = mig.point_processes(procs, gpus_, found, query)
    assert (proc.pid, proc.gpu_uuid) == (4242, found[3].uuid)
    assert gpus_[0].mig_enabled and gpus_[0].memory_used_mib == 22 + 17 + 9009 + 9


def _forged(name: str) -> str:
    """The captured ``nvidia-smi -q`` under load with gpu_burn's name replaced by ``name``
    (nvidia-smi prints a process's name raw: a line break in it starts lines of its own)."""
    query = (MIG / "q_load.txt").read_text()
    real = "Name                          : ./gpu_burn\n"
    assert query.count(real) == 1
    return query.replace(real, f"Name                          : {name}\n")


# Lines a process name could add after its own: a MIG device, a whole GPU block, a process
# entry, each saying what the real one does not (gpu_burn's slice unused, gpu_burn elsewhere).
_DEVICE_UNUSED = (
    "x\n    MIG Device\n        Index : 1\n        GPU Instance ID : 2\n        Compute Instance ID : 1\n"
    "        Shared FB Memory Usage\n            Total : 71424 MiB\n            Used : 0 MiB\n"
    "            Free : 71424 MiB"
)
FORGERIES = {
    "a MIG device again": (_DEVICE_UNUSED, "MIG device 1 of GPU 00000000:83:00.0 twice"),
    "the GPU again": (f"x\nGPU 00000000:83:00.0\n{_DEVICE_UNUSED.removeprefix('x')}", "GPU 00000000:83:00.0 twice"),
    "a process again": (
        "x\n        GPU instance ID : 3\n        Compute instance ID : 0\n        Process ID : 12267",
        "process 12267 on GPU 00000000:83:00.0 twice",
    ),
}


def test_a_process_name_cannot_make_a_slice_look_unused_or_move_a_process() -> None:
    """Each forgery read after the real lines would win (the slice gpu_burn fills would look
    free, or gpu_burn would run on another slice): an answer listing anything twice is
    refused, and the probe then offers no slice of that GPU."""
    from forge.gpu import probe

    listed = (MIG / "list.txt").read_text()
    gpu_csv, apps_csv = (
        _as_asked("query_gpu_load.csv", nvsmi.GPU_FIELDS),
        _as_asked("query_apps_load.csv", nvsmi.APP_FIELDS),
    )
    stdout = (  # the probe's answer, from the captured values
        f"{probe.MARKER} gpus\n{gpu_csv}{probe.MARKER} status 0\n{probe.MARKER} apps\n{apps_csv}"
        f"{probe.MARKER} status 0\n{probe.MARKER} end\n"
    )
    honest = f"{listed}{mig.MARKER} 0\n{(MIG / 'q_load.txt').read_text()}{mig.MARKER} 0\n"
    host = probe.parse_probe("gpu1", _result(stdout), _result(honest))
    assert [g.label for g in host.gpus] == ["0", "0/0", "0/1", "0/2", "0/3", "0/4"]  # the real answer serves
    for name, (lines, why) in FORGERIES.items():
        forged = _forged(lines)
        try:
            mig.parse_query(forged)
        except mig.MigAnswerError as e:
            assert why in str(e), name
        else:
            raise AssertionError(f"{name}: forged answer taken")
        answer = f"{listed}{mig.MARKER} 0\n{forged}{mig.MARKER} 0\n"
        host = probe.parse_probe("gpu1", _result(stdout), _result(answer))
        assert host.status is ProbeStatus.OK and [g.label for g in host.gpus] == ["0"], name
        assert [v.free for v in assess(host, policy=FreePolicy(), me="alice")] == [False], name
        assert {p.gpu_uuid for p in host.processes} == {UUID0}, name


def _as_asked(name: str, fields: tuple[str, ...]) -> str:
    """A captured CSV (all fields, with units) as the probe asks for it: ``fields``, in that
    order, no header, no units."""
    import re

    header, *rows = (MIG / name).read_text().splitlines()
    names = [nvsmi.canonical_field(h) for h in header.split(", ")]
    cells = [row.split(", ") for row in rows if row]
    return "".join(", ".join(re.sub(r" (MiB|W|%|MHz)$", "", c[names.index(f)]) for f in fields) + "\n" for c in cells)


def _result(stdout: str) -> CommandResult:
    return CommandResult("gpu1", "probe", 0, stdout, "", 0.05)

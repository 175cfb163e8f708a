"""The lab's GPU knob (`forge lab gpu HOST --busy/--idle`) as a pure function of the state."""

from __future__ import annotations

import pytest

from forge.lab.gpus import default_state, with_load


def test_busy_gpus_get_the_load_the_others_and_the_processes_stay() -> None:
    before = default_state("gpu1")
    before["processes"] = [{"pid": 7, "name": "python", "used_memory_mib": 10, "gpu_uuid": before["gpus"][3]["uuid"]}]
    after = with_load(before, [0, 2], utilization_pct=80, memory_used_mib=40000)
    assert [(g["utilization_gpu_pct"], g["memory_used_mib"]) for g in after["gpus"]] == [
        (80, 40000), (0, 0), (80, 40000), (0, 0),
    ]  # fmt: skip
    assert after["processes"] == before["processes"]
    assert before["gpus"][0]["memory_used_mib"] == 0  # the state given is not changed
    idle = with_load(after, [0, 1, 2, 3], utilization_pct=0, memory_used_mib=0)
    assert [(g["utilization_gpu_pct"], g["memory_used_mib"]) for g in idle["gpus"]] == [(0, 0)] * 4


def test_memory_is_capped_at_the_gpu_total() -> None:
    after = with_load(default_state(), [1], utilization_pct=5, memory_used_mib=10**9)
    assert after["gpus"][1]["memory_used_mib"] == after["gpus"][1]["memory_total_mib"] == 143771


@pytest.mark.parametrize(
    ("indexes", "util", "memory", "message"),
    [
        ([4], 50, 0, "no GPU 4 (the host has 0, 1, 2, 3)"),
        ([0], 101, 0, "utilization is 0-100 %"),
        ([0], 50, -1, "memory used at least 0 MiB"),
    ],
)
def test_bad_requests_say_what_is_wrong(indexes: list[int], util: int, memory: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_load(default_state(), indexes, utilization_pct=util, memory_used_mib=memory)


def test_a_holder_replaces_the_processes_on_its_gpus_only() -> None:
    from forge.lab.gpus import with_holder

    state = default_state("gpu1")
    u = [g["uuid"] for g in state["gpus"]]
    state["processes"] = [{"pid": 5, "name": "a", "used_memory_mib": 1, "gpu_uuid": u[0]},
                          {"pid": 6, "name": "b", "used_memory_mib": 1, "gpu_uuid": u[2]}]  # fmt: skip
    held = with_holder(state, [u[0], u[1]], 4242, 9000)
    assert sorted((p["pid"], p["gpu_uuid"], p["used_memory_mib"]) for p in held["processes"]) == sorted(
        [(6, u[2], 1), (4242, u[0], 9000), (4242, u[1], 9000)]
    )
    assert with_holder(held, [u[0], u[1]], None, 0)["processes"] == [state["processes"][1]]

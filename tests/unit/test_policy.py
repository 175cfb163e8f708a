"""Free-GPU policy and the one selection function: tables of cases plus hypothesis properties."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forge.gpu.model import Gpu, GpuProcess, HostGpus, ProbeStatus
from forge.gpu.policy import Candidate, FreePolicy, assess, gpu_is_free, is_foreign, select

DEFAULT = FreePolicy()


def gpu(
    index: int = 0,
    *,
    host: str = "h",
    used: int | None = 0,
    util: int | None = 0,
    total: int | None = 143771,
    free: int | None = None,
    mig: str | None = "Disabled",
) -> Gpu:
    return Gpu(
        index=index,
        uuid=f"GPU-{host}-{index}",
        name="NVIDIA H200",
        pci_bus_id=f"00000000:{index:02X}:00.0",
        memory_total_mib=total,
        memory_used_mib=used,
        memory_free_mib=free,
        utilization_gpu_pct=util,
        utilization_memory_pct=0,
        temperature_c=30,
        power_draw_w=80.0,
        power_limit_w=700.0,
        compute_mode="Default",
        mig_mode=mig,
    )


def proc(
    on: Gpu, *, user: str | None = "alice", owner: str | None = None, pid: int = 100, mem: int | None = 500
) -> GpuProcess:
    return GpuProcess(
        pid=pid,
        name="python3",
        used_memory_mib=mem,
        gpu_uuid=on.uuid,
        user=user,
        container_id="c" * 64 if owner else None,
        env_name="env" if owner else None,
        env_owner=owner,
    )


def host(
    name: str, gpus: Sequence[Gpu], procs: Sequence[GpuProcess] = (), status: ProbeStatus = ProbeStatus.OK
) -> HostGpus:
    return HostGpus(host=name, status=status, gpus=tuple(gpus), processes=tuple(procs))


# ------------------------------------------------------------------------------ FreePolicy


def test_defaults() -> None:
    assert (DEFAULT.max_memory_used_mib, DEFAULT.max_utilization_pct, DEFAULT.max_foreign_processes) == (1024, 10, 0)


def test_merge_fleet_host_command_in_order() -> None:
    fleet = {"max_memory_used_mib": 2048, "max_utilization_pct": 20}
    host_ = {"max_utilization_pct": 5}
    command = {"max_foreign_processes": 1}
    assert DEFAULT.merged(fleet, host_, command) == FreePolicy(2048, 5, 1)
    assert DEFAULT.merged(None, {}, None) == DEFAULT
    assert DEFAULT.merged(command, {"max_foreign_processes": 0}) == DEFAULT  # later wins


def test_merge_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="max_temp"):
        DEFAULT.merged({"max_temp": 80})


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.max_memory_used_mib = 1  # type: ignore[misc]


# -------------------------------------------------------------------------- is_foreign / free

G = gpu()


@pytest.mark.parametrize(
    ("process", "me", "foreign"),
    [
        (proc(G, user="alice"), "alice", False),
        (proc(G, user="bob"), "alice", True),
        (proc(G, user="root", owner="alice"), "alice", False),  # my forge container, run as root
        (proc(G, user="root", owner="bob"), "alice", True),
        (proc(G, user=None), "alice", True),  # unknown owner: someone else
        (proc(G, user="alice"), None, True),  # no identity: everything is foreign
    ],
)
def test_is_foreign(process: GpuProcess, me: str | None, foreign: bool) -> None:
    assert is_foreign(process, me=me) is foreign


@pytest.mark.parametrize(
    ("g", "procs", "policy", "free", "why"),
    [
        (gpu(), [], DEFAULT, True, "free"),
        (gpu(used=1024), [], DEFAULT, True, "free"),  # at the limit is still free
        (gpu(used=1025), [], DEFAULT, False, "MiB used"),
        (gpu(used=None), [], DEFAULT, False, "not reported"),
        (gpu(util=10), [], DEFAULT, True, "free"),
        (gpu(util=11), [], DEFAULT, False, "busy"),
        (gpu(util=None), [], DEFAULT, True, "free"),  # unreported utilization is not held against it
        (gpu(mig="Enabled"), [], DEFAULT, False, "MIG"),
        (gpu(mig=None), [], DEFAULT, True, "free"),
        (gpu(), [proc(G, user="bob")], DEFAULT, False, "bob"),
        (gpu(), [proc(G, user="alice")], DEFAULT, True, "free"),  # mine
        (gpu(), [proc(G, user="root", owner="alice")], DEFAULT, True, "free"),  # my container
        (gpu(), [proc(G, user="bob")], FreePolicy(max_foreign_processes=1), True, "free"),
        (
            gpu(),
            [proc(G, user="bob"), proc(G, user="carol", pid=2)],
            FreePolicy(max_foreign_processes=1),
            False,
            "2 process",
        ),
        (gpu(), [proc(gpu(1), user="bob")], DEFAULT, True, "free"),  # a process on another GPU
        (gpu(used=3000), [], FreePolicy(max_memory_used_mib=4096), True, "free"),
    ],
)
def test_gpu_is_free_table(g: Gpu, procs: list[GpuProcess], policy: FreePolicy, free: bool, why: str) -> None:
    ok, reason = gpu_is_free(g, procs, policy=policy, me="alice")
    assert ok is free
    assert why in reason


def test_assess_lists_every_gpu_in_index_order() -> None:
    g0, g1 = gpu(0), gpu(1, used=50000)
    p = proc(g1, user="bob")
    verdicts = assess(host("h", [g1, g0], [p]), policy=DEFAULT, me="alice")
    assert [(v.gpu.index, v.free, v.processes) for v in verdicts] == [(0, True, ()), (1, False, (p,))]


# ---------------------------------------------------------------------------------- select


def h(name: str, *specs: tuple[int | None, int | None], procs_on: dict[int, str] | None = None) -> HostGpus:
    """A host whose GPU i has (memory used, utilization) = specs[i]; procs_on: index -> user."""
    gpus = [gpu(i, host=name, used=u, util=t) for i, (u, t) in enumerate(specs)]
    procs = [proc(gpus[i], user=user, pid=1000 + i) for i, user in (procs_on or {}).items()]
    return host(name, gpus, procs)


IDLE4 = ((0, 0),) * 4


def names(cands: list[Candidate]) -> list[str]:
    return [c.host for c in cands]


@pytest.mark.parametrize(
    ("hosts", "kwargs", "expect"),
    [
        # most free GPUs first
        ([h("a", (0, 0)), h("b", *IDLE4)], {"count": 1}, ["b", "a"]),
        # a host needs `count` free GPUs
        ([h("a", (0, 0)), h("b", *IDLE4)], {"count": 2}, ["b"]),
        ([h("a", (0, 0)), h("b", *IDLE4)], {"count": 5}, []),
        # equal free counts: least memory used on the chosen GPUs, then utilization, then name
        ([h("b", (500, 0), (500, 0)), h("a", (600, 0), (600, 0))], {"count": 1}, ["b", "a"]),
        ([h("b", (0, 5), (0, 5)), h("a", (0, 6), (0, 6))], {"count": 1}, ["b", "a"]),
        ([h("b", (0, 0)), h("a", (0, 0)), h("c", (0, 0))], {"count": 1}, ["a", "b", "c"]),
        # busy and foreign GPUs do not count
        ([h("a", (5000, 0), (0, 0)), h("b", (0, 0), (0, 0))], {"count": 2}, ["b"]),
        ([h("a", (0, 0), (0, 0), procs_on={1: "bob"}), h("b", (0, 90), (0, 0))], {"count": 2}, []),
        ([h("a", (0, 0), (0, 0), procs_on={1: "alice"})], {"count": 2, "me": "alice"}, ["a"]),
        ([h("a", (0, 0), (0, 0), procs_on={1: "alice"})], {"count": 2, "me": None}, []),
        # exclusions and limits
        ([h("a", *IDLE4), h("b", *IDLE4)], {"count": 1, "exclude_hosts": ["a"]}, ["b"]),
        ([h("a", (0, 0), (0, 0))], {"count": 2, "exclude_gpus": ["GPU-a-1"]}, []),
        ([h("a", *IDLE4), h("b", *IDLE4), h("c", *IDLE4)], {"count": 1, "limit": 2}, ["a", "b"]),
        # per-host policy
        (
            [h("a", (2000, 0)), h("b", (2000, 0))],
            {"count": 1, "policy": {"a": FreePolicy(max_memory_used_mib=4096)}},
            ["a"],
        ),
        # min free memory: reported free, else total - used
        (
            [h("a", (100000, 0))],
            {"count": 1, "policy": FreePolicy(max_memory_used_mib=200000), "min_free_memory_mib": 50000},
            [],
        ),
        ([h("a", (0, 0))], {"count": 1, "min_free_memory_mib": 143771}, ["a"]),
        ([h("a", (0, 0))], {"count": 1, "min_free_memory_mib": 143772}, []),
    ],
)
def test_select_table(hosts: list[HostGpus], kwargs: dict[str, object], expect: list[str]) -> None:
    kwargs = {"me": "alice", **kwargs}
    assert names(select(hosts, **kwargs)) == expect  # type: ignore[arg-type]


def test_select_skips_hosts_that_are_not_ok() -> None:
    bad = [host(n, [gpu(0, host=n)], status=s) for n, s in [("x", ProbeStatus.ERROR), ("y", ProbeStatus.NO_GPUS)]]
    assert names(select([*bad, h("a", (0, 0))], count=1)) == ["a"]


def test_select_chooses_least_loaded_gpus_and_reports_them_by_index() -> None:
    hg = h("a", (900, 0), (100, 0), (100, 5), (0, 0))
    (cand,) = select([hg], count=3)
    assert cand.gpu_indexes == (1, 2, 3)
    assert cand.gpu_uuids == ("GPU-a-1", "GPU-a-2", "GPU-a-3")
    assert (cand.free_gpus, cand.memory_used_mib, cand.utilization_pct) == (4, 200, 5)


def test_min_free_memory_uses_reported_free_memory() -> None:
    g = gpu(0, host="a", used=0, free=1000)  # e.g. reserved memory
    assert select([host("a", [g])], count=1, min_free_memory_mib=1001) == []
    assert len(select([host("a", [g])], count=1, min_free_memory_mib=1000)) == 1
    unknown = gpu(0, host="b", used=0, total=None)
    assert select([host("b", [unknown])], count=1, min_free_memory_mib=1) == []
    assert len(select([host("b", [unknown])], count=1)) == 1


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"count": -1}, {"count": 1, "min_free_memory_mib": -1}])
def test_select_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        select([], **kwargs)  # type: ignore[arg-type]


def test_select_rejects_duplicate_hosts() -> None:
    with pytest.raises(ValueError, match="once"):
        select([h("a", (0, 0)), h("a", (0, 0))], count=1)


def test_select_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        select([], 1)  # type: ignore[misc]


# ------------------------------------------------------------------------------ properties

USERS = ["alice", "bob", None]


@st.composite
def fleets(draw: st.DrawFn) -> list[HostGpus]:
    hosts = []
    for n in range(draw(st.integers(0, 6))):
        name = f"gpu{n}"
        gpus = [
            gpu(
                i,
                host=name,
                used=draw(st.one_of(st.none(), st.sampled_from([0, 200, 1024, 1025, 5000, 80000]))),
                util=draw(st.one_of(st.none(), st.sampled_from([0, 5, 10, 11, 100]))),
                free=draw(st.one_of(st.none(), st.integers(0, 143771))),
                mig=draw(st.sampled_from(["Disabled", "Enabled", None])),
            )
            for i in range(draw(st.integers(0, 8)))
        ]
        procs = [
            proc(
                draw(st.sampled_from(gpus)),
                user=draw(st.sampled_from(USERS)),
                owner=draw(st.sampled_from(USERS)),
                pid=pid,
            )
            for pid in range(draw(st.integers(0, 5) if gpus else st.just(0)))
        ]
        status = draw(st.sampled_from([ProbeStatus.OK] * 4 + [ProbeStatus.ERROR, ProbeStatus.NO_GPUS]))
        hosts.append(host(name, gpus, procs, status))
    return hosts


policies_ = st.builds(
    FreePolicy,
    max_memory_used_mib=st.sampled_from([0, 1024, 4096]),
    max_utilization_pct=st.sampled_from([0, 10, 50]),
    max_foreign_processes=st.sampled_from([0, 1, 2]),
)
args = st.fixed_dictionaries(
    {
        "count": st.integers(1, 4),
        "min_free_memory_mib": st.sampled_from([0, 1, 50000, 143771]),
        "policy": policies_,
        "me": st.sampled_from(USERS),
    }
)


@settings(max_examples=300, deadline=None)
@given(fleet=fleets(), kw=args)
def test_never_picks_a_busy_gpu_and_exactly_count(fleet: list[HostGpus], kw: dict[str, object]) -> None:
    by_name = {hg.host: hg for hg in fleet}
    for cand in select(fleet, **kw):  # type: ignore[arg-type]
        hg = by_name[cand.host]
        assert hg.ok
        assert len(cand.gpu_uuids) == kw["count"] == len(cand.gpu_indexes)
        assert len(set(cand.gpu_uuids)) == len(cand.gpu_uuids)
        assert list(cand.gpu_indexes) == sorted(cand.gpu_indexes)
        assert cand.free_gpus >= kw["count"]
        for uuid, index in zip(cand.gpu_uuids, cand.gpu_indexes, strict=True):
            g = hg.gpu(uuid)
            assert g is not None and g.index == index
            free, _ = gpu_is_free(g, hg.processes, policy=kw["policy"], me=kw["me"])  # type: ignore[arg-type]
            assert free
            if kw["min_free_memory_mib"]:
                assert g.free_memory_mib is not None and g.free_memory_mib >= kw["min_free_memory_mib"]  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(fleet=fleets(), kw=args, seed=st.integers(0, 2**32))
def test_deterministic_whatever_the_input_order(fleet: list[HostGpus], kw: dict[str, object], seed: int) -> None:
    shuffled = list(fleet)
    random.Random(seed).shuffle(shuffled)
    assert select(fleet, **kw) == select(shuffled, **kw)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(fleet=fleets(), kw=args)
def test_every_qualifying_host_is_returned_ranked(fleet: list[HostGpus], kw: dict[str, object]) -> None:
    cands = select(fleet, **kw)  # type: ignore[arg-type]
    keys = [(-c.free_gpus, c.memory_used_mib, c.utilization_pct, c.host) for c in cands]
    assert keys == sorted(keys)
    assert len({c.host for c in cands}) == len(cands)
    # A host is missing only when it has fewer than `count` usable GPUs.
    chosen = {c.host for c in cands}
    for hg in fleet:
        if hg.host in chosen or not hg.ok:
            continue
        usable = [
            g
            for g in hg.gpus
            if gpu_is_free(g, hg.processes, policy=kw["policy"], me=kw["me"])[0]  # type: ignore[arg-type]
            and (not kw["min_free_memory_mib"] or (g.free_memory_mib or -1) >= kw["min_free_memory_mib"])  # type: ignore[operator]
        ]
        assert len(usable) < kw["count"]  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(fleet=fleets(), kw=args, limit=st.integers(0, 3))
def test_limit_and_exclusions(fleet: list[HostGpus], kw: dict[str, object], limit: int) -> None:
    full = select(fleet, **kw)  # type: ignore[arg-type]
    assert select(fleet, **kw, limit=limit) == full[:limit]  # type: ignore[arg-type]
    if full:
        first = full[0]
        without = select(fleet, **kw, exclude_hosts=[first.host])  # type: ignore[arg-type]
        assert first.host not in names(without)
        no_gpu = select(fleet, **kw, exclude_gpus=first.gpu_uuids[:1])  # type: ignore[arg-type]
        assert all(first.gpu_uuids[0] not in c.gpu_uuids for c in no_gpu)


@settings(max_examples=200, deadline=None)
@given(fleet=fleets(), kw=args)
def test_a_stricter_policy_never_adds_hosts(fleet: list[HostGpus], kw: dict[str, object]) -> None:
    loose = set(names(select(fleet, **kw)))  # type: ignore[arg-type]
    policy = kw["policy"]
    assert isinstance(policy, FreePolicy)
    strict = dataclasses.replace(
        policy,
        max_memory_used_mib=policy.max_memory_used_mib // 2,
        max_utilization_pct=policy.max_utilization_pct // 2,
        max_foreign_processes=0,
    )
    assert set(names(select(fleet, **{**kw, "policy": strict}))) <= loose  # type: ignore[arg-type]

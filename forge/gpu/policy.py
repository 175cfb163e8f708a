"""When is a GPU free, and which hosts and GPUs serve a request: pure functions over snapshots.

:func:`select` is the one selection function (keyword-only, like nvitop's ``select_devices``):
the CLI, the scheduler and tests all call it with :class:`~forge.gpu.model.HostGpus`
snapshots and get ranked :class:`Candidate` s back. Nothing here runs a command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from forge.gpu.model import Gpu, GpuHold, GpuProcess, HostGpus

_POLICY_KEYS = ("max_memory_used_mib", "max_utilization_pct", "max_foreign_processes")


@dataclass(frozen=True)
class FreePolicy:
    """Thresholds under which a GPU counts as free.

    A GPU is free when all hold: MIG mode is not enabled (a MIG-enabled GPU is handed out by its
    instances, each a GPU of its own: :mod:`forge.gpu.mig`); its used
    memory is known and at most ``max_memory_used_mib``; its utilization, when reported, is at
    most ``max_utilization_pct``; and at most ``max_foreign_processes`` processes on it belong
    to someone else (see :func:`is_foreign`). The defaults leave room for the few hundred MiB a
    driver or an idle context holds, and for a sampling blip of utilization.
    """

    max_memory_used_mib: int = 1024
    max_utilization_pct: int = 10
    max_foreign_processes: int = 0

    def merged(self, *overrides: Mapping[str, int] | None) -> FreePolicy:
        """This policy with each override applied in turn (fleet, then host, then command).

        Overrides are dicts of this class's field names (validated by the inventory); ``None``
        or empty dicts change nothing. An unknown key is a programming error: ValueError.
        """
        policy = self
        for override in overrides:
            if not override:
                continue
            unknown = set(override) - set(_POLICY_KEYS)
            if unknown:
                raise ValueError(f"unknown free-policy keys: {sorted(unknown)}")
            policy = dataclasses.replace(policy, **dict(override))
        return policy


def is_foreign(proc: GpuProcess, *, me: str | None) -> bool:
    """Whether a process belongs to someone other than ``me``.

    A process is mine when ``ps`` names me as its user, or when it runs in a forge container
    whose ``forge.owner`` label is me (a container's processes often run as root or as a
    container user). With ``me=None`` (no identity known) every process is foreign, and so is a
    process whose owner could not be read.
    """
    if me is None:
        return True
    return not (proc.user == me or proc.env_owner == me)


def gpu_is_free(
    gpu: Gpu,
    processes: Sequence[GpuProcess],
    *,
    policy: FreePolicy,
    me: str | None,
    hold: GpuHold | None = None,
    holds_unknown: str | None = None,
) -> tuple[bool, str]:
    """Whether ``gpu`` is free under ``policy``, and why (a short phrase for display).

    ``processes`` may be the host's whole list: only those on ``gpu.uuid`` count. A GPU a forge
    environment holds (``hold``, see :attr:`HostGpus.holds`) is never free, even while no
    process runs on it, and even when the environment is ``me``'s: it is taken. Nor is any GPU
    of a host whose holds could not be read (``holds_unknown``: why).
    """
    if holds_unknown is not None:
        return False, f"unknown: {holds_unknown}"
    if hold is not None:
        whose = f"{hold.owner}'s" if hold.owner else "a"
        claimed = " (claimed)" if hold.kind == "claim" else ""
        return False, f"held by {whose} environment {hold.env or '?'}{claimed}"
    if gpu.mig_enabled:
        return False, "split into MIG instances (listed after it)"
    if gpu.memory_used_mib is None:
        return False, "memory use not reported"
    if gpu.memory_used_mib > policy.max_memory_used_mib:
        return False, f"{gpu.memory_used_mib} MiB used (> {policy.max_memory_used_mib})"
    if gpu.utilization_gpu_pct is not None and gpu.utilization_gpu_pct > policy.max_utilization_pct:
        return False, f"{gpu.utilization_gpu_pct} % busy (> {policy.max_utilization_pct})"
    foreign = [p for p in processes if p.gpu_uuid == gpu.uuid and is_foreign(p, me=me)]
    if len(foreign) > policy.max_foreign_processes:
        # A forge container's processes belong to the environment's owner, whatever their uid.
        owners = sorted({p.env_owner or p.user or "an unknown user" for p in foreign})
        noun = "process" if len(foreign) == 1 else "processes"
        return False, f"{len(foreign)} {noun} of {', '.join(owners)}"
    return True, "free"


@dataclass(frozen=True)
class GpuVerdict:
    """One GPU of a host with the processes on it and whether it is free (for display)."""

    gpu: Gpu
    processes: tuple[GpuProcess, ...]
    free: bool
    reason: str
    hold: GpuHold | None = None  # the forge environment the GPU is given to, if any


def assess(host: HostGpus, *, policy: FreePolicy, me: str | None) -> tuple[GpuVerdict, ...]:
    """Every GPU of ``host`` with its verdict under ``policy``, in index order."""
    verdicts = []
    for gpu in sorted(host.gpus, key=lambda g: (g.index, -1 if g.mig_device is None else g.mig_device)):
        hold = host.hold(gpu.uuid)
        free, reason = gpu_is_free(
            gpu, host.processes, policy=policy, me=me, hold=hold, holds_unknown=host.holds_unknown
        )
        verdicts.append(GpuVerdict(gpu, host.processes_on(gpu.uuid), free, reason, hold))
    return tuple(verdicts)


@dataclass(frozen=True)
class Candidate:
    """One host that can serve a request, and the GPUs chosen on it.

    ``gpu_uuids`` and ``gpu_indexes`` are parallel and sorted by index. Hand the UUIDs to
    ``CUDA_VISIBLE_DEVICES`` / ``docker --gpus``: indexes differ between nvidia-smi and CUDA.
    """

    host: str
    gpu_uuids: tuple[str, ...]
    gpu_indexes: tuple[int, ...]
    free_gpus: int  # how many GPUs on the host are free (and have enough memory)
    memory_used_mib: int  # summed over the chosen GPUs
    utilization_pct: int  # summed over the chosen GPUs (unreported counts as 0)
    gpu_labels: tuple[str, ...] = ()  # as people name them: "2", or "2/3" for a MIG instance


def _policy_for(host: str, policy: FreePolicy | Mapping[str, FreePolicy]) -> FreePolicy:
    if isinstance(policy, FreePolicy):
        return policy
    return policy.get(host, FreePolicy())


def _gpu_load(gpu: Gpu) -> tuple[int, int, int]:
    # Memory used, then utilization, then index: the least loaded GPU first, deterministically.
    return (gpu.memory_used_mib or 0, gpu.utilization_gpu_pct or 0, gpu.index)


def usable(
    host: HostGpus, policy: FreePolicy, me: str | None, excluded: set[str], min_free_mib: int, *, slices: bool = False
) -> list[Gpu]:
    """The host's GPUs a request may take: free, not excluded, with the memory asked for,
    least loaded first. With ``slices``, MIG instances too, before whole GPUs, smallest first
    (the best fit: whole GPUs stay free for whoever needs one)."""
    found = []
    for gpu in host.gpus:
        if (
            (gpu.is_mig_instance and not slices)
            or gpu.uuid in excluded
            or not gpu_is_free(gpu, host.processes, policy=policy, me=me, hold=host.hold(gpu.uuid))[0]
        ):
            continue
        if min_free_mib > 0 and (gpu.free_memory_mib is None or gpu.free_memory_mib < min_free_mib):
            continue
        found.append(gpu)
    return sorted(
        found, key=lambda g: (not g.is_mig_instance, g.memory_total_mib or 0 if g.is_mig_instance else 0, *_gpu_load(g))
    )


def select(
    hosts: Sequence[HostGpus],
    *,
    count: int,
    min_free_memory_mib: int = 0,
    policy: FreePolicy | Mapping[str, FreePolicy] = FreePolicy(),  # noqa: B008 (frozen)
    me: str | None = None,
    exclude_hosts: Collection[str] = (),
    exclude_gpus: Collection[str] = (),
    limit: int | None = None,
) -> list[Candidate]:
    """Hosts that have ``count`` free GPUs, best first, with the GPUs to use on each.

    - A host qualifies when its probe is ``ok`` and saw which GPUs forge environments hold
      (:attr:`HostGpus.holds_unknown` is None), it is not in ``exclude_hosts``, and at least
      ``count`` of its GPUs are free under its policy (:func:`gpu_is_free`), are not in
      ``exclude_gpus`` (UUIDs) and have at least ``min_free_memory_mib`` free (reported free
      memory, else total - used; unknown fails any positive minimum).
    - ``policy``: one for all hosts or per host (missing hosts: the default :class:`FreePolicy`).
    - On a host, the ``count`` least loaded free GPUs are chosen: least memory used, then least
      utilization, then lowest index.
    - Ranking, best first: most free GPUs on the host (spreads work over the emptiest hosts,
      so jobs rarely share a host's CPUs, PCIe and disk); then least memory used by the chosen
      GPUs; then least utilization of the chosen GPUs; then host name, so equal hosts always
      come in the same order.
    - A MIG instance (:mod:`forge.gpu.mig`) serves only a one-GPU request by memory
      (``min_free_memory_mib``): the smallest that fits comes before any whole GPU.
    - ``limit``: at most this many candidates.

    Pure and deterministic: the same snapshots give the same answer, whatever their order.
    """
    if count < 1 or min_free_memory_mib < 0:
        raise ValueError(f"count must be at least 1 and min_free_memory_mib >= 0, got {count}, {min_free_memory_mib}")
    excluded_hosts = set(exclude_hosts)
    names = [h.host for h in hosts]
    if len(set(names)) != len(names):
        raise ValueError("each host may appear only once")
    candidates: list[Candidate] = []
    for host in hosts:
        if not host.ok or host.holds_unknown is not None or host.host in excluded_hosts:
            continue
        slices = count == 1 and min_free_memory_mib > 0  # a slice serves a one-GPU request by memory
        fit = usable(host, _policy_for(host.host, policy), me, set(exclude_gpus), min_free_memory_mib, slices=slices)
        if len(fit) < count:
            continue
        chosen = sorted(fit[:count], key=lambda g: g.index)
        candidates.append(
            Candidate(
                host=host.host,
                gpu_uuids=tuple(g.uuid for g in chosen),
                gpu_indexes=tuple(g.index for g in chosen),
                gpu_labels=tuple(g.label for g in chosen),
                free_gpus=len(fit),
                memory_used_mib=sum(g.memory_used_mib or 0 for g in chosen),
                utilization_pct=sum(g.utilization_gpu_pct or 0 for g in chosen),
            )
        )
    candidates.sort(key=lambda c: (-c.free_gpus, c.memory_used_mib, c.utilization_pct, c.host))
    return candidates if limit is None else candidates[:limit]

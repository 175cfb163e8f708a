"""The fleet's GPUs: probe every host in parallel and judge each GPU under its policy.

This is what ``forge gpus`` shows and what placement decisions start from. The policy of a
host is the built-in default, then the inventory's ``[gpu_policy]``, then the host's own
``gpu_policy`` table, then the command's overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from forge import fleet
from forge.gpu.model import HostGpus
from forge.gpu.policy import FreePolicy, GpuVerdict, assess
from forge.gpu.probe import probe_host
from forge.inventory import Host, Inventory
from forge.progress import Progress
from forge.session import user_on


@dataclass(frozen=True)
class HostReport:
    """One host's answer: its GPUs with verdicts, or why there is nothing to show."""

    host: Host
    me: str  # whose processes count as "mine" on this host
    policy: FreePolicy
    gpus: HostGpus | None  # None when the host could not be probed at all
    error: str | None  # why the host did not answer (connection, timeout)
    verdicts: tuple[GpuVerdict, ...] = ()

    @property
    def answered(self) -> bool:
        return self.gpus is not None


def policy_for(inv: Inventory, host: Host, overrides: Mapping[str, int] | None = None) -> FreePolicy:
    return FreePolicy().merged(inv.gpu_policy.as_overrides(), host.gpu_policy.as_overrides(), overrides)


def survey(
    inv: Inventory,
    hosts: Sequence[Host],
    *,
    pool: fleet.Pool,
    overrides: Mapping[str, int] | None = None,
    timeout: float = 20.0,
    concurrency: int = fleet.DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> list[HostReport]:
    """Probe ``hosts`` (one round trip each, in parallel) and assess every GPU."""
    results = fleet.run(
        hosts,
        lambda s: probe_host(s, timeout=timeout),
        pool=pool,
        concurrency=concurrency,
        deadline_s=timeout + max((h.connect_timeout for h in hosts), default=0) + 5,
        progress=progress,
    )
    reports = []
    for r in results:
        policy = policy_for(inv, r.host, overrides)
        me = user_on(r.host)
        if r.value is None:
            reports.append(HostReport(r.host, me, policy, None, r.reason))
            continue
        verdicts = assess(r.value, policy=policy, me=me) if r.value.ok else ()
        reports.append(HostReport(r.host, me, policy, r.value, None, verdicts))
    return reports


def policies(
    inv: Inventory, hosts: Sequence[Host], overrides: Mapping[str, int] | None = None
) -> dict[str, FreePolicy]:
    """Each host's policy, for :func:`forge.gpu.policy.select`."""
    return {h.name: policy_for(inv, h, overrides) for h in hosts}

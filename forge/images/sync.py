"""``forge sync``: ship a Docker image from one host to many, sending only what each lacks.

Per run:

1. **describe** the image on its source (:mod:`forge.images.source`): its ID there, its config
   digest and, where it can be known up front, its manifest: so forge knows the ID the image
   will have on each kind of target (classic store: the config digest; containerd store: the
   manifest digest);
2. **plan** every target from one survey each, in parallel: ``current`` (that ID, tags in
   place), ``tag`` (that ID, a tag missing) or ``send`` (with the layers, by chain ID, the host
   already has, which are left out);
3. **send** in waves of ``concurrency`` hosts (:mod:`forge.images.wave`): one read of the
   source per wave (its layer store, or ``docker save`` transcoded), shared by the hosts that
   lack the same layers, each host loading with ``decompress | docker load`` over its own SSH
   channel; forge's load archive (:mod:`forge.images.oci`) tags nothing;
4. **check** the ID that arrived and only then tag it. A containerd-store target that holds a
   left-out layer under another (compressed) blob keeps the loaded image hidden: forge sees it
   missing from the image list and sends that host everything once more. After a failed load,
   forge removes what it left behind; a rerun completes the job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

from forge import fleet
from forge.errors import ForgeError, why
from forge.fleet import FleetResult, HostResult, Pool
from forge.images import direct, registry
from forge.images.inspect import ImageInfo, survey
from forge.images.job import Job
from forge.images.layerstore import LayerStoreError
from forge.images.plan import HostPlan, plan_host, wanted_tags
from forge.images.source import Source, describe
from forge.images.wave import HostSync, SyncFailed, Wave, tag
from forge.inventory import Host, RegistrySettings
from forge.progress import NoProgress, Progress
from forge.session import HostSession

READS = ("auto", "store", "save")
VIAS = ("auto", "client", "direct", "relay", "registry")
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 3600.0

__all__ = ["HostPlan", "HostSync", "SyncFailed", "SyncReport", "plan", "sync_image", "wanted_tags"]


@dataclass(frozen=True)
class SyncReport:
    ref: str
    image: ImageInfo
    tags: tuple[str, ...]
    results: FleetResult[HostSync]
    read: str = ""  # how the source was read: "store", "save", or "" (nothing was sent)
    read_note: str = ""  # why not from the layer store, when it could not be
    pushed: registry.Pushed | None = None  # --via registry: what the push sent


def plan(
    ref: str,
    *,
    source: Host,
    targets: Sequence[Host],
    pool: Pool,
    compress: str = "auto",
    concurrency: int = fleet.DEFAULT_CONCURRENCY,
    read: str = "auto",
) -> tuple[ImageInfo, tuple[str, ...], FleetResult[HostPlan]]:
    """The image on the source and a plan per target (one round trip per host)."""
    src, tags, plans = _plan(ref, source, targets, pool, compress, concurrency, read)
    return src.image, tags, plans


def _plan(
    ref: str, source: Host, targets: Sequence[Host], pool: Pool, compress: str, concurrency: int, read: str
) -> tuple[Source, tuple[str, ...], FleetResult[HostPlan]]:
    surveys = fleet.run(targets, survey, pool=pool, concurrency=concurrency)
    first = describe(pool.get(source), ref, read=read)
    tags = wanted_tags(ref, first.image)
    results: list[HostResult[HostPlan]] = []
    for r in surveys:
        if r.value is None:
            results.append(cast(HostResult[HostPlan], r))
            continue
        try:
            value = plan_host(r.host, r.value, first.image, tags, compress, expected=first.expected_id(r.value.store))
            results.append(HostResult(r.host, value=value, duration_s=r.duration_s))
        except ForgeError as e:
            results.append(HostResult(r.host, error=e, duration_s=r.duration_s))
    return first, tags, FleetResult(tuple(results))


def sync_image(
    ref: str,
    *,
    source: Host,
    targets: Sequence[Host],
    pool: Pool,
    compress: str = "auto",
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    read: str = "auto",
    via: str = "client",
    registry_settings: RegistrySettings | None = None,
) -> SyncReport:
    """Make ``ref`` (a name or an image ID on ``source``) present and tagged on every target.

    ``read``: ``auto`` (the layer store where readable, else ``docker save``), ``store`` or
    ``save``. ``via``: ``client`` (the bytes pass through this machine, which sends each host
    only the layers it lacks), ``direct`` (a remote source sends to each target itself, whole
    image, :mod:`forge.images.direct`; targets it cannot reach go through this machine),
    ``relay`` (the source, this machine or another, sends one copy along a chain of the
    targets, each loading and passing it on; those the chain did not serve are sent to after)
    ``registry`` (the source pushes to ``registry_settings``' registry, and every target pulls
    at once: :mod:`forge.images.registry`) or ``auto`` (when the source is another host:
    direct to the targets that have none of the image's layers, through this machine to those
    that have some, which then get only what they lack). Targets the chosen way cannot serve
    go through this machine, with why.
    """
    _check_options(read, via, registry_settings)
    progress = progress or NoProgress()
    targets = [t for t in targets if t.name != source.name]
    src, tags, plans = _plan(ref, source, targets, pool, compress, fleet.DEFAULT_CONCURRENCY, read)
    if read == "store" and src.layer_store is None and any(_sends(plans)):
        raise LayerStoreError(f"{source.name}: cannot read the layer store: {src.store_note}", hint="use --read save")
    results: dict[str, HostResult[HostSync]] = {r.host.name: cast(HostResult[HostSync], r) for r in plans.failed}
    for r in _finish_quick(src, tags, plans, pool):
        results[r.host.name] = r
    used = ""
    to_send = _sends(plans)
    notes: dict[str, str] = {}
    pushed: list[registry.Pushed] = []
    job = Job(src, tags, pool, progress, timeout_s, compress)
    if to_send and via == "registry" and registry_settings is not None:
        to_send, notes = _send_registry(job, to_send, results, registry_settings, pushed)
    elif to_send and (via == "relay" or (via != "client" and not source.local)):
        # auto: straight from the source to targets that have none of the image; those that
        # have some of its layers get only what they lack, through this machine.
        direct_plans = [p for p in to_send if via != "auto" or not p.skip]
        later = [p for p in to_send if p not in direct_plans]
        if direct_plans:
            back, notes = _send_direct(job, direct_plans, results, via)
            to_send = back + later
            used = "save"
    if to_send:
        used = _send_through_client(job, to_send, concurrency, results, notes)
    note = src.store_note if used == "save" else ""
    final = FleetResult(tuple(results[h.name] for h in targets))
    return SyncReport(ref, src.image, tags, final, used, note, pushed[0] if pushed else None)


def _check_options(read: str, via: str, registry_settings: RegistrySettings | None) -> None:
    if read not in READS:
        raise ForgeError(f"unknown way to read the image {read!r}", hint="one of " + ", ".join(READS))
    if via not in VIAS:
        raise ForgeError(f"unknown way to send the image {via!r}", hint="one of " + ", ".join(VIAS))
    if via == "registry" and (registry_settings is None or registry_settings.address is None):
        raise ForgeError("--via registry: the inventory names no registry", hint="add [registry] address = ...")


def _send_through_client(
    job: Job, to_send: list[HostPlan], concurrency: int, results: dict[str, HostResult[HostSync]], notes: dict[str, str]
) -> str:
    """In waves of ``concurrency`` hosts (into ``results``, each with the note of why it came
    this way, if any); how the source was read."""
    used = ""
    for attempt in range(2):  # a second pass sends everything to hosts whose load stayed hidden
        retry: list[HostPlan] = []
        for i in range(0, len(to_send), max(1, concurrency)):
            wave = Wave(job, to_send[i : i + max(1, concurrency)])
            used = wave.read_kind
            for r in wave.run():
                if r.value is not None and r.value.incomplete and attempt == 0:
                    retry.append(replace(wave.plan(r.host.name), skip=frozenset()))
                elif r.value is not None and r.host.name in notes:
                    results[r.host.name] = replace(r, value=replace(r.value, note=notes[r.host.name]))
                else:
                    results[r.host.name] = r
        to_send = retry
        if not to_send:
            break
    return used


def _send_direct(
    job: Job, plans: list[HostPlan], results: dict[str, HostResult[HostSync]], via: str
) -> tuple[list[HostPlan], dict[str, str]]:
    """Send from the source without this machine in the way (into ``results``): along a chain
    first for ``relay``, then straight from a remote source to whatever the chain did not
    serve. Returns the plans left for this machine to send, with why."""
    notes: dict[str, str] = {}
    for relay in [True, False] if via == "relay" else [False]:
        if not plans or (not relay and job.src.host.local):
            break
        done = direct.send(job, plans, relay=relay)
        results.update({r.host.name: r for r in done.results})
        notes |= {p.host.name: reason for p, reason in done.fallback}
        again = {p.host.name for p, _ in done.fallback}
        if relay:  # what the chain did not serve is sent to again
            again |= {r.host.name for r in done.results if not r.ok}
        plans = [p for p in plans if p.host.name in again]
    return plans, notes


def _send_registry(
    job: Job,
    plans: list[HostPlan],
    results: dict[str, HostResult[HostSync]],
    settings: RegistrySettings,
    pushed_out: list[registry.Pushed],
) -> tuple[list[HostPlan], dict[str, str]]:
    """Push once, pull everywhere at once (into ``results``); the plans left for this machine
    to send, with why."""
    assert settings.address is not None
    address, src = settings.address, job.src
    repo, tag_ = registry.remote_name(settings, job.tags, src.image.id)
    job.progress.note(f"pushing {src.image.id[:19]} to {repo}:{tag_}")
    try:
        pushed = registry.push(job.pool.get(src.host), src, repo, tag_, address, job.timeout_s)
    except ForgeError as e:
        return plans, {p.host.name: why(e) for p in plans}
    pushed_out.append(pushed)
    by_name = {p.host.name: p for p in plans}
    pulled = fleet.run(
        [p.host for p in plans],
        lambda s: registry.pull(s, by_name[s.name], src, pushed, job.tags, address, job.timeout_s),
        pool=job.pool,
    )
    notes: dict[str, str] = {}
    for r in pulled:
        if r.ok:
            results[r.host.name] = r
        else:
            notes[r.host.name] = why(r.error) if r.error is not None else "failed"
    return [p for p in plans if p.host.name in notes], notes


def _sends(plans: FleetResult[HostPlan]) -> list[HostPlan]:
    return [r.value for r in plans.succeeded if r.value is not None and r.value.action == "send"]


def _finish_quick(
    src: Source, tags: tuple[str, ...], plans: FleetResult[HostPlan], pool: Pool
) -> FleetResult[HostSync]:
    """Hosts that have the image: tag where a tag is missing."""
    quick = {r.value.host.name: r.value for r in plans.succeeded if r.value is not None and r.value.action != "send"}

    def finish(s: HostSession) -> HostSync:
        p = quick[s.name]
        started = time.monotonic()
        if p.action == "tag" and p.image_id:
            tag(s, p.image_id, tags)
        return HostSync(
            s.name,
            p.action,
            layers_total=len(src.image.layers),
            seconds=time.monotonic() - started,
            image_id=p.image_id,
        )

    return fleet.run([p.host for p in quick.values()], finish, pool=pool)

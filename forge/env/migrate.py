"""``forge migrate``: move an environment to another host (or start it), never losing the old one.

Steps, each named in errors (:class:`MigrateFailed.step`):

1. **locate**: find the environment (labels ``forge.env`` + ``forge.owner``) across the fleet.
2. **choose**: ``idle`` = the best host under the free-GPU policy for the GPUs asked (the
   environment's current host excluded), GPUs held by live claims left out; or a named host.
3. **image**: with ``keep_changes``, ``docker commit`` the old container; ship the image from the
   old host with :func:`forge.images.sync.sync_image` (only missing layers travel).
4. **volume**: ensure the data volume on the target and read the marker through it.
5. **claim**: claim the GPUs atomically (:mod:`forge.env.claims`), re-probe, and check they are
   still free; a lost race picks other GPUs (or the next candidate host).
6. **container**: ``docker run`` and wait until its sshd answers (host keys read).
7. **finish**: stop and remove the old container and release its claims.

Until step 7 the old environment is untouched; when a step fails, what this run created on the
target (container, claims, a volume it created, the committed image) is removed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from forge import fleet
from forge.dockercli import docker_argv
from forge.env import claims, launch, volume
from forge.env.errors import ClaimConflict, EnvError, MigrateFailed
from forge.env.listing import Environment, HostListing, list_host
from forge.env.sshconfig import check_name
from forge.errors import ForgeError
from forge.fleet import FleetResult, Pool
from forge.gpu.model import HostGpus
from forge.gpu.policy import Candidate, gpu_is_free, select
from forge.gpu.probe import probe_host
from forge.gpu.survey import me_on, policies, policy_for
from forge.images.sync import sync_image
from forge.inventory import Host, Inventory
from forge.transport import Transport

Progress = Callable[[str], None]
_REPO_UNSAFE = re.compile(r"[^a-z0-9_./-]")


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Request:
    """What to migrate and where; defaults come from ``[environment]`` (see :func:`request_from`)."""

    env: str
    to: str = "idle"  # "idle" or a host name
    gpus: int = 1
    min_free_memory_mib: int = 0
    image: str | None = None
    image_from: str | None = None  # host to ship the image from when there is no old env
    keep_changes: bool = False
    among: tuple[str, ...] | None = None  # hosts `idle` may choose from (default: all)
    user: str | None = None  # login name in the container (default: the SSH user)
    hostname: str | None = None
    mount: str = "/data"
    ssh_port: int = 0
    ssh_port_range: tuple[int, int] = (2200, 2299)
    shm_size: str | None = None
    extra_args: tuple[str, ...] = ()
    authorized_keys: str = ""
    with_volume: bool = True
    ready_timeout_s: float = 120.0
    claim_grace_s: float = claims.DEFAULT_GRACE_S

    def __post_init__(self) -> None:
        # Before anything is created: the name becomes a label, a hostname, a ~/.ssh/config Host.
        check_name(self.env)


def request_from(inv: Inventory, **overrides: object) -> Request:
    e = inv.environment
    base: dict[str, object] = dict(
        env=e.name,
        gpus=e.gpus,
        min_free_memory_mib=e.min_free_memory_mib,
        image=e.image,
        user=e.user,
        hostname=e.hostname,
        mount=e.mount,
        ssh_port=e.ssh_port,
        ssh_port_range=e.ssh_port_range,
        shm_size=e.shm_size,
        extra_args=e.extra_args,
        with_volume=inv.data.address is not None,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Request(**base)  # type: ignore[arg-type]


@dataclass
class Result:
    env: str
    owner: str
    host: str
    address: str
    container: str
    port: int
    gpus: tuple[str, ...]
    gpu_indexes: tuple[int, ...]
    image: str
    user: str
    host_keys: list[tuple[str, str]]
    volume: volume.VolumeState | None
    old_host: str | None = None
    old_container: str | None = None
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- locate


def list_fleet(hosts: Sequence[Host], pool: Pool) -> FleetResult[HostListing]:
    return fleet.run(hosts, lambda t: list_host(_host_of(hosts, t.name), t), pool=pool)


def _host_of(hosts: Sequence[Host], name: str) -> Host:
    return next(h for h in hosts if h.name == name)


def _listing_of(listings: FleetResult[HostListing], host: str) -> HostListing:
    return next(r.value for r in listings.succeeded if r.host.name == host and r.value is not None)


def find(listings: FleetResult[HostListing], env: str) -> list[Environment]:
    """The containers of environment ``env`` owned by the SSH user of their host."""
    found = []
    for r in listings.succeeded:
        assert r.value is not None
        found += [e for e in r.value.environments if e.name == env and e.owner == me_on(r.host)]
    return found


def locate(
    inv: Inventory,
    env: str,
    pool: Pool,
    *,
    hosts: Sequence[Host] | None = None,
    listings: FleetResult[HostListing] | None = None,
) -> Environment | None:
    """Where ``env`` runs now (None: nowhere). Unreachable hosts are ignored."""
    found = find(listings if listings is not None else list_fleet(hosts or inv.hosts, pool), env)
    if len(found) > 1:
        where = ", ".join(f"{e.host}:{e.container.name}" for e in found)
        raise EnvError(f"environment {env!r} runs more than once ({where})", hint="stop the extra one: forge stop")
    return found[0] if found else None


# --------------------------------------------------------------------------- choose


def _excluded_gpus(listings: FleetResult[HostListing], pool: Pool, grace_s: float) -> set[str]:
    """GPUs under live claims; stale claims are removed on the way."""
    out: set[str] = set()
    for r in listings.succeeded:
        assert r.value is not None
        claims.remove_stale(r.host, pool.get(r.host), r.value, grace_s=grace_s)
        out |= claims.claimed_gpus(r.value, grace_s=grace_s)
    return out


def candidates(
    inv: Inventory,
    req: Request,
    pool: Pool,
    *,
    current: Environment | None,
    listings: FleetResult[HostListing] | None = None,
) -> list[Candidate]:
    """Target hosts, best first, with the GPUs to use on each. ``listings``: the fleet as
    :func:`locate` just listed it (not listed again)."""
    if req.to == "idle":
        hosts = inv.select(list(req.among)) if req.among else list(inv.hosts)
        exclude_hosts = {current.host} if current else set()
    else:
        hosts = [inv.host(req.to)]
        exclude_hosts = set()
    hosts = [h for h in hosts if h.name not in exclude_hosts]
    if not hosts:
        raise EnvError("no host to migrate to", hint="name one with --to HOST")
    wanted = {h.name for h in hosts}
    if listings is not None and wanted <= {r.host.name for r in listings}:
        listings = FleetResult(tuple(r for r in listings if r.host.name in wanted))
    else:
        listings = list_fleet(hosts, pool)
    excluded = _excluded_gpus(listings, pool, req.claim_grace_s)
    reachable = [r.host for r in listings.succeeded]
    by_name = {h.name: h for h in reachable}
    snapshots = fleet.run(
        reachable, lambda t: probe_host(t, timeout=30, docker_host=by_name[t.name].docker_host), pool=pool
    )
    found = select(
        [r.value for r in snapshots.succeeded if r.value is not None],
        count=req.gpus,
        min_free_memory_mib=req.min_free_memory_mib,
        policy=policies(inv, hosts),
        me=me_on(hosts[0]),
        exclude_gpus=excluded,
    )
    if not found:
        failed: dict[str, ForgeError] = {r.host.name: r.error for r in listings.failed if r.error is not None}
        failed.update({r.host.name: r.error for r in snapshots.failed if r.error is not None})
        if req.to in failed:  # a named host that did not answer: say so, not "no free GPUs"
            raise failed[req.to]
        what = f"no host has {req.gpus}" if req.to == "idle" else f"{req.to} has no {req.gpus}"
        hints = ["see `forge gpus --free`"]
        if excluded:
            hints.append(f"{len(excluded)} GPU(s) are held by forge environments, idle or not (`forge ps`)")
        if failed:
            hints.append(f"unreachable: {', '.join(failed)}")
        raise EnvError(f"{what} free GPU(s) right now", hint="; ".join(hints))
    return found


def _pick_on_host(inv: Inventory, req: Request, host: Host, gpus: HostGpus, excluded: set[str]) -> Candidate | None:
    found = select(
        [gpus],
        count=req.gpus,
        min_free_memory_mib=req.min_free_memory_mib,
        policy=policy_for(inv, host),
        me=me_on(host),
        exclude_gpus=excluded,
    )
    return found[0] if found else None


def still_free(inv: Inventory, host: Host, gpus: HostGpus, chosen: Sequence[str]) -> list[str]:
    """The chosen GPUs that are no longer free on a fresh probe (pure)."""
    policy = policy_for(inv, host)
    lost = []
    for uuid in chosen:
        gpu = gpus.gpu(uuid)
        if gpu is None or not gpu_is_free(gpu, gpus.processes, policy=policy, me=me_on(host))[0]:
            lost.append(uuid)
    return lost


def claim_gpus(
    inv: Inventory,
    req: Request,
    host: Host,
    pool: Pool,
    *,
    image: str,
    owner: str,
    container: str,
    attempts: int = 6,
) -> tuple[Candidate, tuple[str, ...]] | None:
    """Claim free GPUs on ``host``: (the GPUs, the claim IDs), or None when it has none left."""
    t = pool.get(host)
    lost: set[str] = set()
    for _ in range(attempts):
        listing = list_host(host, t)
        claims.remove_stale(host, t, listing, grace_s=req.claim_grace_s)
        excluded = set(claims.claimed_gpus(listing, grace_s=req.claim_grace_s)) | lost
        gpus = probe_host(t, timeout=30, docker_host=host.docker_host)
        cand = _pick_on_host(inv, req, host, gpus, excluded)
        if cand is None:
            return None
        try:
            ids = claims.claim(host, t, cand.gpu_uuids, image=image, env=req.env, owner=owner, container=container)
        except ClaimConflict:
            continue  # someone else was faster: list again, choose again
        # Re-check after claiming: a process may have started on a GPU since the probe.
        gone = still_free(inv, host, probe_host(t, timeout=30, docker_host=host.docker_host), cand.gpu_uuids)
        if not gone:
            return cand, ids
        claims.release(host, t, ids)
        lost |= set(gone)
    return None


# --------------------------------------------------------------------------- migrate


KEEP_REPO = "forge-keep"


def keep_tag(env: str, owner: str) -> str:
    repo = _REPO_UNSAFE.sub("-", f"{KEEP_REPO}/{owner}-{env}".lower())
    return f"{repo}:{time.strftime('%Y%m%d-%H%M%S')}"


class _Undo:
    """What this run created, removed in reverse order when a step fails."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, fn: Callable[[], object]) -> None:
        self.actions.append((what, fn))

    def run(self) -> tuple[str, ...]:
        done = []
        for what, fn in reversed(self.actions):
            try:
                fn()
                done.append(what)
            except ForgeError:
                pass
        self.actions.clear()
        return tuple(done)


def migrate(inv: Inventory, req: Request, pool: Pool, *, progress: Progress = _quiet) -> Result:
    """Run the steps above; on failure raise :class:`MigrateFailed` with the old env untouched."""
    step = "locate"
    undo = _Undo()  # the whole run's (the committed image)
    here = _Undo()  # the current candidate host's
    current: Environment | None = None
    try:
        progress(f"looking for environment {req.env!r} on {len(inv.hosts)} host(s)")
        listings = list_fleet(inv.hosts, pool)  # one round trip per host, for locate and choose
        current = locate(inv, req.env, pool, listings=listings)
        old_host = inv.host(current.host) if current else None

        step = "choose"
        cands = candidates(inv, req, pool, current=current, listings=listings)
        progress(f"candidates: {', '.join(c.host for c in cands[:3])}")

        step = "image"
        image, source = _image_source(inv, req, current, pool, undo, progress)

        lacking: list[str] = []  # candidates without the image, when there is no host to ship it from
        for cand in cands[:3]:
            target = inv.host(cand.host)
            t = pool.get(target)
            owner = me_on(target)
            step = "image"
            if source is not None and source.name != target.name:
                progress(f"syncing {image} from {source.name} to {target.name}")
                report = sync_image(image, source=source, targets=[target], pool=pool)
                r = report.results[target.name]
                if r.error is not None:
                    raise r.error
            elif source is None and not t.run(docker_argv(target, "image", "inspect", image), timeout=60).ok:
                progress(f"{target.name} has no image {image}; trying the next host")
                lacking.append(target.name)
                continue
            launch.check_image(target, t, image)
            facts = launch.host_facts(target, t)

            step = "volume"
            vol_state = None
            if req.with_volume:
                spec = volume.spec_for(inv.data, host_name=target.name, user=facts.user, home=facts.home)
                progress(f"ensuring data volume {spec.name} on {target.name} ({spec.driver})")
                vol_state = volume.ensure(
                    target, t, spec, check_image=image, uid=facts.uid, gid=facts.gid, marker=inv.data.marker
                )
                if vol_state.created and vol_state.mount != "alive":
                    here.add(f"volume {spec.name}", partial(_drop_volume, target, t, spec))

            step = "claim"
            name = launch.container_name(req.env, owner)
            got = claim_gpus(inv, req, target, pool, image=image, owner=owner, container=name)
            if got is None:
                progress(f"{target.name} has no free GPUs left; trying the next host")
                here.run()
                continue
            chosen, claim_ids = got
            here.add(f"claims on {target.name}", partial(claims.release, target, t, claim_ids))

            step = "container"
            spec_l = launch.LaunchSpec(
                env=req.env,
                owner=owner,
                image=image,
                name=name,
                gpus=chosen.gpu_uuids,
                uid=facts.uid,
                gid=facts.gid,
                user=req.user or facts.user,
                hostname=req.hostname or req.env,
                volume=vol_state.name if vol_state else None,
                mount=req.mount,
                authorized_keys=req.authorized_keys,
                shm_size=req.shm_size,
                extra_args=req.extra_args,
            )
            progress(f"starting {name} on {target.name} with GPU(s) {','.join(map(str, chosen.gpu_indexes))}")
            here.add(f"container {name}", partial(launch.remove, target, t, name))
            listing = list_host(target, t)
            port = launch.start(
                target, t, spec_l, listing=listing, port_range=req.ssh_port_range, fixed_port=req.ssh_port
            )
            progress(f"waiting for sshd of {name} on port {port}")
            keys = launch.wait_ready(target, t, name, port, timeout_s=req.ready_timeout_s)

            step = "finish"
            here.actions.clear()  # the new environment is up: from here on, nothing is rolled back
            undo.actions.clear()
            result = Result(
                env=req.env,
                owner=owner,
                host=target.name,
                address=target.address,
                container=name,
                port=port,
                gpus=chosen.gpu_uuids,
                gpu_indexes=chosen.gpu_indexes,
                image=image,
                user=spec_l.user,
                host_keys=keys,
                volume=vol_state,
            )
            if current is not None and old_host is not None:
                result.old_host, result.old_container = current.host, current.container.name
                progress(f"removing the old container {current.container.name} on {current.host}")
                old_listing = _listing_of(listings, current.host)
                keep = image if req.keep_changes else None
                result.warnings += _retire(old_host, pool, current, old_listing, keep_image=keep)
            return result
        if lacking and len(lacking) == len(cands[:3]):
            raise EnvError(
                f"no candidate host ({', '.join(lacking)}) has the image {image!r}",
                hint="give --image-from HOST to ship it, or forge sync it first",
            )
        raise EnvError("every candidate host's GPUs were claimed by others meanwhile", hint="run again")
    except ForgeError as e:
        cleaned = here.run() + undo.run()
        raise MigrateFailed(step, e, old=current.host if current else None, cleaned=cleaned) from e


def _drop_volume(host: Host, t: Transport, spec: volume.VolumeSpec) -> None:
    r = t.run(docker_argv(host, "volume", "rm", spec.name), timeout=60)
    if r.ok and spec.mountpoint:  # still used by someone: leave the mount
        volume.unmount(host, t, spec.mountpoint)


def _image_source(
    inv: Inventory, req: Request, current: Environment | None, pool: Pool, undo: _Undo, progress: Progress
) -> tuple[str, Host | None]:
    """(image to launch, host to ship it from; None: it must already be on the target)."""
    if req.keep_changes:
        if current is None:
            raise EnvError(f"--keep-changes: environment {req.env!r} does not run anywhere")
        host = inv.host(current.host)
        t = pool.get(host)
        tag = keep_tag(req.env, current.owner or me_on(host))
        progress(f"committing {current.container.name} on {host.name} as {tag}")
        commit = ["commit", "-m", "forge migrate --keep-changes", current.container.id, tag]
        t.run(docker_argv(host, *commit), timeout=600, check=True)
        undo.add(f"image {tag} on {host.name}", lambda: t.run(docker_argv(host, "rmi", tag), timeout=120))
        return tag, host
    image = req.image
    if not image:
        raise EnvError("no image to run", hint="set [environment].image in hosts.toml or pass --image")
    if req.image_from:
        return image, inv.host(req.image_from)
    return image, inv.host(current.host) if current else None


def _retire(host: Host, pool: Pool, env: Environment, listing: HostListing, *, keep_image: str | None) -> list[str]:
    """Remove the old container, its claims (found in ``listing``, the host as :func:`locate`
    listed it) and the committed image; problems become warnings."""
    warnings = []
    try:
        t = pool.get(host)
        if not launch.remove(host, t, env.container.id):
            warnings.append(f"could not remove the old container {env.container.name} on {host.name}")
        claims.release(host, t, claims.claims_for(listing, env.container.name))
        images = [i for i in (keep_image, _kept_image(env)) if i]
        if images:
            t.run(docker_argv(host, "rmi", *dict.fromkeys(images)), timeout=120)
    except ForgeError as e:
        warnings.append(f"{host.name}: cleaning up the old environment: {e}")
    return warnings


def _kept_image(env: Environment) -> str | None:
    """The ``--keep-changes`` commit the container runs, which forge made and nothing else uses
    (``docker rmi`` without -f still refuses if something does)."""
    image = env.container.image
    return image if image.startswith(KEEP_REPO + "/") else None


def stop(inv: Inventory, env: str, pool: Pool, *, hosts: Sequence[Host] | None = None) -> Environment | None:
    """Stop and remove ``env``'s container, release its claims, and remove the ``--keep-changes``
    image it ran; None when it runs nowhere."""
    listings = list_fleet(hosts or inv.hosts, pool)
    current = locate(inv, env, pool, listings=listings)
    if current is None:
        return None
    host = inv.host(current.host)
    t = pool.get(host)
    launch.remove(host, t, current.container.id)
    # Its claims were made before it started: the listing that found it has them all.
    claims.release(host, t, claims.claims_for(_listing_of(listings, current.host), current.container.name))
    kept = _kept_image(current)
    if kept:
        t.run(docker_argv(host, "rmi", kept), timeout=120)
    return current

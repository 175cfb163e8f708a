"""``forge migrate``: move an environment to another host (or start it), never losing the old one.

Steps, each named in errors (:class:`MigrateFailed.step`):

1. **locate**: find the environment (labels ``forge.env`` + ``forge.owner``) across the fleet.
2. **choose**: refuse beyond the user's quota (``[policy]``, :mod:`forge.env.quota`); ``idle``
   = the best host under the free-GPU policy for the GPUs asked (the environment's current
   host excluded), GPUs held by live claims left out; or a named host.
3. **image**: with ``keep_changes``, ``docker commit`` the old container; ship the image from the
   old host with :func:`forge.images.sync.sync_image` (only missing layers travel).
4. **volume**: ensure the data volume on the target and read the marker through it.
5. **claim**: claim the GPUs atomically (:mod:`forge.env.claims`), re-probe, and check they are
   still free; a lost race picks other GPUs (or the next candidate host). With a quota, the
   user's claims on the fleet are listed again: a run that came second gives its claims back.
6. **container**: ``docker run`` and wait until its sshd answers (host keys read).
7. **finish**: stop and remove the old container and release its claims.

Until step 7 the old environment is untouched; when a step fails, what this run created on the
target (container, claims, a volume it created, the committed image) is removed: each step
registers its undo as it goes (:mod:`forge.env.steps`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from forge import fleet
from forge.durations import format_duration
from forge.env import claims, envs, launch, queue, quota, volume
from forge.env.errors import ClaimConflict, EnvError, MigrateFailed
from forge.env.idle import Mark
from forge.env.listing import Claim, Environment, HostListing, list_host
from forge.env.names import check_name, keep_repo
from forge.env.steps import Steps
from forge.errors import ForgeError
from forge.fleet import FleetResult, Pool
from forge.gpu.model import HostGpus
from forge.gpu.policy import Candidate, gpu_is_free, select, usable
from forge.gpu.probe import probe_host
from forge.gpu.survey import policies, policy_for
from forge.gpu.wait import WaitTimedOut
from forge.images.sync import sync_image
from forge.inventory import Host, Inventory
from forge.progress import NoProgress, Progress
from forge.session import HostSession, user_on


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
    wait: bool = False  # no free GPUs: wait in line for them (forge/env/queue.py)
    wait_timeout_s: float | None = None  # None: wait on
    wait_interval_s: float = 5.0
    waiter_timeout_s: float = 60.0  # [policy] waiter_timeout

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
        waiter_timeout_s=inv.policy.waiter_timeout_s,
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
    gpu_labels: tuple[str, ...]  # "2", or "2/3" for MIG device 3 of GPU 2
    image: str
    user: str
    host_keys: list[tuple[str, str]]
    volume: volume.VolumeState | None
    old_host: str | None = None
    old_container: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "env": self.env,
            "owner": self.owner,
            "host": self.host,
            "address": self.address,
            "container": self.container,
            "port": self.port,
            "gpus": list(self.gpus),
            "gpu_indexes": list(self.gpu_indexes),
            "gpu_labels": list(self.gpu_labels),
            "image": self.image,
            "user": self.user,
            "volume": self.volume.name if self.volume else None,
            "old_host": self.old_host,
            "old_container": self.old_container,
            "host_keys": [f"{k} {v}" for k, v in self.host_keys],
            "warnings": self.warnings,
        }


# --------------------------------------------------------------------------- choose


def _excluded_gpus(listings: FleetResult[HostListing], pool: Pool, grace_s: float) -> set[str]:
    """GPUs under live claims; stale claims are removed on the way."""
    out: set[str] = set()
    for r in listings.succeeded:
        assert r.value is not None
        claims.remove_stale(pool.get(r.host), r.value, grace_s=grace_s)
        out |= claims.claimed_gpus(r.value, grace_s=grace_s)
    return out


def _target_hosts(inv: Inventory, req: Request, current: Environment | None) -> list[Host]:
    if req.to == "idle":
        hosts = inv.select(list(req.among)) if req.among else list(inv.hosts)
        if current is not None and current.container.state == "running":  # idle never keeps it there
            hosts = [h for h in hosts if h.name != current.host]
    else:
        hosts = [inv.host(req.to)]
    if not hosts:
        raise EnvError("no host to migrate to", hint="name one with --to HOST")
    return hosts


class NoCandidate(EnvError):
    """No host has the GPUs asked for free right now (waiting may help: ``--wait``)."""


@dataclass(frozen=True)
class Choice:
    candidates: list[Candidate]  # best first
    reserved: dict[str, set[str]]  # per host, the GPUs left to the waiters ahead in line


def candidates(
    inv: Inventory,
    req: Request,
    pool: Pool,
    *,
    current: Environment | None,
    listings: FleetResult[HostListing] | None = None,
    ticket: str | None = None,
) -> Choice:
    """Target hosts, best first, with the GPUs to use on each, leaving to the waiters in line
    ahead (of ``ticket``, or of everyone) the GPUs they would take. ``listings``: the fleet as
    :func:`~forge.env.envs.locate` just listed it (not listed again)."""
    hosts = _target_hosts(inv, req, current)
    wanted = {h.name for h in hosts}
    if listings is not None and wanted <= {r.host.name for r in listings}:
        listings = FleetResult(tuple(r for r in listings if r.host.name in wanted))
    else:
        listings = envs.list_fleet(hosts, pool, volumes=True)
    excluded = _excluded_gpus(listings, pool, req.claim_grace_s)
    snapshots = fleet.run([r.host for r in listings.succeeded], lambda s: probe_host(s, timeout=30), pool=pool)
    reserved = _reserved(inv, listings, snapshots, excluded, ticket)
    found = select(
        [r.value for r in snapshots.succeeded if r.value is not None],
        count=req.gpus,
        min_free_memory_mib=req.min_free_memory_mib,
        policy=policies(inv, hosts),
        me=user_on(hosts[0]),
        exclude_gpus=excluded.union(*reserved.values()),
    )
    if not found:
        failed: dict[str, ForgeError] = {r.host.name: r.error for r in listings.failed if r.error is not None}
        failed.update({r.host.name: r.error for r in snapshots.failed if r.error is not None})
        raise _no_candidate(req, failed, excluded, sum(map(len, reserved.values())))
    return Choice(found, reserved)


def _reserved(
    inv: Inventory,
    listings: FleetResult[HostListing],
    snapshots: FleetResult[HostGpus],
    excluded: set[str],
    ticket: str | None,
) -> dict[str, set[str]]:
    """Per host, the free GPUs the waiters ahead of ``ticket`` in its line would take now."""
    lines = {r.host.name: r.value for r in listings.succeeded if r.value is not None and r.value.tickets}
    out: dict[str, set[str]] = {}
    for r in snapshots.succeeded:
        listing = lines.get(r.host.name)
        if listing is None or r.value is None:
            continue
        ahead = queue.ahead_of(queue.line(listing.tickets, listing.now_s), ticket)
        if ahead:
            free = usable(r.value, policy_for(inv, r.host), user_on(r.host), excluded, 0)
            out[r.host.name] = queue.reserved(ahead, free)
    return out


def _no_candidate(req: Request, failed: dict[str, ForgeError], excluded: set[str], waited_for: int) -> ForgeError:
    if req.to in failed:  # a named host that did not answer: say so, not "no free GPUs"
        return failed[req.to]
    what = f"no host has {req.gpus}" if req.to == "idle" else f"{req.to} has no {req.gpus}"
    hints = ["see `forge gpus --free`", "--wait waits in line for them"]
    if excluded:
        hints.append(f"{len(excluded)} GPU(s) are held by forge environments, idle or not (`forge ps`)")
    if waited_for:
        hints.append(f"{waited_for} free GPU(s) are left to people waiting in line before you")
    if failed:
        hints.append(f"unreachable: {', '.join(failed)}")
    return NoCandidate(f"{what} free GPU(s) right now", hint="; ".join(hints))


def still_free(inv: Inventory, s: HostSession, gpus: HostGpus, chosen: Sequence[str]) -> list[str]:
    """The chosen GPUs that are no longer free on a fresh probe (pure)."""
    policy = policy_for(inv, s.host)
    lost = []
    for uuid in chosen:
        gpu = gpus.gpu(uuid)
        if gpu is None or not gpu_is_free(gpu, gpus.processes, policy=policy, me=s.me)[0]:
            lost.append(uuid)
    return lost


@dataclass(frozen=True)
class Claimed:
    candidate: Candidate
    ids: tuple[str, ...]  # the claim containers
    listing: HostListing | None  # the host's containers, when it had to be listed again


def claim_gpus(
    inv: Inventory,
    req: Request,
    s: HostSession,
    *,
    image: str,
    container: str,
    reserved: set[str] | None = None,
    attempts: int = 6,
) -> Claimed | None:
    """Claim free GPUs on the host, or None when it has none left.

    The probe sees which GPUs forge environments hold (claims included) and the claim is
    atomic (a container name), so the host is listed again only after losing a race to another
    claimer (to clear stale claims before choosing again)."""
    lost: set[str] = set(reserved or ())  # left to the waiters ahead in line
    listing: HostListing | None = None
    for _ in range(attempts):
        excluded = set(lost)
        if listing is not None:
            claims.remove_stale(s, listing, grace_s=req.claim_grace_s)
            excluded |= claims.claimed_gpus(listing, grace_s=req.claim_grace_s)
        gpus = probe_host(s, timeout=30)
        found = select(
            [gpus],
            count=req.gpus,
            min_free_memory_mib=req.min_free_memory_mib,
            policy=policy_for(inv, s.host),
            me=s.me,
            exclude_gpus=excluded,
        )
        if not found:
            return None
        try:
            ids = claims.claim(s, found[0].gpu_uuids, image=image, env=req.env, owner=s.me, container=container)
        except ClaimConflict:
            listing = list_host(s)  # someone else was faster: list again, choose again
            continue
        # Re-check after claiming: a process may have started on a GPU since the probe.
        try:
            gone = still_free(inv, s, probe_host(s, timeout=30), found[0].gpu_uuids)
        except BaseException:  # the caller's undo does not know these claims yet
            with contextlib.suppress(ForgeError):
                claims.release(s, ids)
            raise
        if not gone:
            return Claimed(found[0], ids, listing)
        claims.release(s, ids)
        lost |= set(gone)
    return None


# --------------------------------------------------------------------------- migrate


def keep_tag(env: str, owner: str) -> str:
    return f"{keep_repo(env, owner)}:{time.strftime('%Y%m%d-%H%M%S')}"


def migrate(inv: Inventory, req: Request, pool: Pool, *, progress: Progress | None = None) -> Result:
    """Run the steps above; on failure raise :class:`MigrateFailed` with the old env untouched."""
    run = _Migration(inv, req, pool, progress or NoProgress())
    try:
        return run.go()
    except ForgeError as e:
        cleaned = run.steps.rollback()
        raise MigrateFailed(run.steps.current, e, old=run.current.host if run.current else None, cleaned=cleaned) from e
    except KeyboardInterrupt:  # Ctrl-C (e.g. while waiting in line): leave nothing behind
        run.steps.rollback()
        raise


class _Migration:
    """One ``forge migrate``: its steps, in order, each registering what undoes it."""

    def __init__(self, inv: Inventory, req: Request, pool: Pool, progress: Progress) -> None:
        self.inv, self.req, self.pool, self.progress = inv, req, pool, progress
        self.steps = Steps()
        self.current: Environment | None = None
        self.listings: FleetResult[HostListing] | None = None
        self.reserved: dict[str, set[str]] = {}
        self.waiter: queue.Waiter | None = None
        self.reclaimed: Mark | None = None  # forge reclaim stopped it: its changes come back

    def go(self) -> Result:
        with self.steps.step("locate"):
            self.progress.note(f"looking for environment {self.req.env!r} on {len(self.inv.hosts)} host(s)")
            # one round trip a host: locate, and choose (the lines for GPUs too)
            self.listings = envs.list_fleet(self.inv.hosts, self.pool, volumes=True)
            self.current = envs.locate(self.inv, self.req.env, self.pool, listings=self.listings)
            self.reclaimed = envs.reclaimed(self.listings, self.req.env, self.current)
        with self.steps.step("choose"):
            self._quota_before()
            cands = self._choose()
            self.progress.note(f"candidates: {', '.join(c.host for c in cands[:3])}")
        with self.steps.step("image"):
            image, source = self._image_source()
        lacking: list[str] = []  # candidates without the image, when there is no host to ship it from
        for cand in cands[:3]:
            s = self.pool.get(self.inv.host(cand.host))
            mark = self.steps.mark()
            result = self._try(s, image, source, lacking)
            if result is not None:
                self.steps.keep()  # the new environment is up: from here on, nothing is rolled back
                with self.steps.step("finish"):
                    return self._finish(result)
            self.steps.rollback(mark)
        if lacking and len(lacking) == len(cands[:3]):
            raise EnvError(
                f"no candidate host ({', '.join(lacking)}) has the image {image!r}",
                hint="give --image-from HOST to ship it, or forge sync it first",
            )
        raise EnvError("every candidate host's GPUs were claimed by others meanwhile", hint="run again")

    # ------------------------------------------------------------------ steps on one candidate

    def _try(self, s: HostSession, image: str, source: Host | None, lacking: list[str]) -> Result | None:
        """Image, volume, claim and container on one candidate; None: try the next one."""
        with self.steps.step("image"):
            if not self._ship(s, image, source):
                lacking.append(s.name)
                return None
            launch.check_image(s, image)
            facts = launch.host_facts(s)
        with self.steps.step("volume"):
            vol = self._volume(s, image, facts)
        with self.steps.step("claim"):
            name = launch.container_name(self.req.env, s.me)
            got = claim_gpus(self.inv, self.req, s, image=image, container=name, reserved=self.reserved.get(s.name))
            if got is None:
                self.progress.note(f"{s.name} has no free GPUs left; trying the next host")
                return None
            self.steps.undo(f"claims on {s.name}", partial(claims.release, s, got.ids))
            self._quota_after(got)
            if self.waiter is not None:  # the claims hold the GPUs now: out of the line
                self.waiter.leave()
        with self.steps.step("container"):
            spec = self._spec(s, image, name, got.candidate, facts, vol)
            indexes = ",".join(got.candidate.gpu_labels)
            self.progress.note(f"starting {name} on {s.name} with GPU(s) {indexes}")
            self.steps.undo(f"container {name}", partial(launch.remove, s, name))
            listing = got.listing or self._listing(s)
            port = launch.start(
                s, spec, listing=listing, port_range=self.req.ssh_port_range, fixed_port=self.req.ssh_port
            )
            self.progress.note(f"waiting for sshd of {name} on port {port}")
            keys = launch.wait_ready(s, name, port, timeout_s=self.req.ready_timeout_s)
        return Result(
            env=self.req.env,
            owner=s.me,
            host=s.name,
            address=s.host.address,
            container=name,
            port=port,
            gpus=got.candidate.gpu_uuids,
            gpu_indexes=got.candidate.gpu_indexes,
            gpu_labels=got.candidate.gpu_labels,
            image=image,
            user=spec.user,
            host_keys=keys,
            volume=vol,
        )

    def _listing(self, s: HostSession) -> HostListing:
        """The host's containers as the fleet listing saw them (ports in use by forge)."""
        if self.listings is not None and s.name in {r.host.name for r in self.listings.succeeded}:
            return envs.listing_of(self.listings, s.name)
        return list_host(s)

    def _ship(self, s: HostSession, image: str, source: Host | None) -> bool:
        """The image on the candidate: shipped from ``source``, or already there (False: it is not)."""
        if source is not None and source.name != s.name:
            self.progress.note(f"syncing {image} from {source.name} to {s.name}")
            report = sync_image(image, source=source, targets=[s.host], pool=self.pool, via="auto")
            r = report.results[s.name]
            if r.error is not None:
                raise r.error
            return True
        if source is None and not s.run(s.docker("image", "inspect", image), timeout=60).ok:
            self.progress.note(f"{s.name} has no image {image}; trying the next host")
            return False
        return True

    def _volume(self, s: HostSession, image: str, facts: launch.HostFacts) -> volume.VolumeState | None:
        if not self.req.with_volume:
            return None
        spec = volume.spec_for(self.inv.data, host_name=s.name, user=facts.user, home=facts.home)
        self.progress.note(f"ensuring data volume {spec.name} on {s.name} ({spec.driver})")
        state = volume.ensure(s, spec, check_image=image, uid=facts.uid, gid=facts.gid, marker=self.inv.data.marker)
        if state.created and state.mount != "alive":
            self.steps.undo(f"volume {spec.name}", partial(volume.drop, s, spec, unmount_in_use=False))
        return state

    def _spec(
        self,
        s: HostSession,
        image: str,
        name: str,
        cand: Candidate,
        facts: launch.HostFacts,
        vol: volume.VolumeState | None,
    ) -> launch.LaunchSpec:
        req = self.req
        return launch.LaunchSpec(
            env=req.env,
            owner=s.me,
            image=image,
            name=name,
            gpus=cand.gpu_uuids,
            uid=facts.uid,
            gid=facts.gid,
            user=req.user or facts.user,
            hostname=req.hostname or req.env,
            volume=vol.name if vol else None,
            mount=req.mount,
            authorized_keys=req.authorized_keys,
            shm_size=req.shm_size,
            extra_args=req.extra_args,
        )

    # ------------------------------------------------------------------ waiting in line

    def _choose(self) -> list[Candidate]:
        try:
            choice = candidates(self.inv, self.req, self.pool, current=self.current, listings=self.listings)
        except NoCandidate:
            if not self.req.wait:
                raise
            choice = self._wait_in_line()
        self.reserved = choice.reserved
        return choice.candidates

    def _wait_in_line(self) -> Choice:
        """Hold a place in line on every target host until the request fits there (or the
        wait's time runs out: :class:`~forge.gpu.wait.WaitTimedOut`)."""
        req = self.req
        hosts = _target_hosts(self.inv, req, self.current)
        owner = user_on(hosts[0])
        self.waiter = waiter = queue.Waiter(
            queue.new_id(), owner=owner, env=req.env, gpus=req.gpus, min_free_mib=req.min_free_memory_mib,
            ttl_s=req.waiter_timeout_s, session=lambda name: self.pool.get(self.inv.host(name)),
        )  # fmt: skip
        self.steps.undo("place in line", waiter.leave)
        start, said = time.monotonic(), ""
        while True:
            listings = envs.list_fleet(hosts, self.pool, volumes=True)
            waiter.keep(r.value for r in listings.succeeded if r.value is not None)
            try:
                return candidates(self.inv, req, self.pool, current=self.current, listings=listings, ticket=waiter.id)
            except NoCandidate:
                pass
            waited = time.monotonic() - start
            if req.wait_timeout_s is not None and waited >= req.wait_timeout_s:
                raise WaitTimedOut(f"{req.gpus} free GPU(s) did not come within {format_duration(req.wait_timeout_s)}")
            places = waiter.places(r.value for r in listings.succeeded if r.value is not None)
            now = ", ".join(f"{n} of {total} on {h}" for h, n, total in places) or "no place yet"
            if now != said:
                self.progress.note(f"waiting in line for {req.gpus} GPU(s): {now}")
                said = now
            left = None if req.wait_timeout_s is None else req.wait_timeout_s - waited
            time.sleep(req.wait_interval_s if left is None else max(0.0, min(req.wait_interval_s, left)))

    # ------------------------------------------------------------------ the quota

    @property
    def _owner(self) -> str:
        return user_on(self.inv.hosts[0]) if self.inv.hosts else user_on(self.inv.here())

    def _old_claims(self) -> set[str]:
        """The claims of the environment being migrated: not counted (released at the end)."""
        if self.current is None or self.listings is None:
            return set()
        return set(claims.claims_for(envs.listing_of(self.listings, self.current.host), self.current.container.name))

    def _quota_before(self) -> None:
        """What the user holds (all hosts that answered) and asks must fit ``[policy]``."""
        quota_n = self.inv.policy.quota(self._owner)
        if quota_n is None or self.listings is None:
            return
        listed = [r.value for r in self.listings.succeeded if r.value is not None]
        mine = quota.claims_of(listed, self._owner, grace_s=self.req.claim_grace_s, ignore=self._old_claims())
        quota.check(self._owner, quota_n, quota.holdings(mine), self.req.gpus)

    def _quota_after(self, got: Claimed) -> None:
        """After claiming: the fleet's claims of the user again, in their one order; ours past
        the quota (another run of the user's came first) are given back by the caller's undo."""
        quota_n = self.inv.policy.quota(self._owner)
        if quota_n is None:
            return
        listed = [r.value for r in envs.list_fleet(self.inv.hosts, self.pool).succeeded if r.value is not None]
        mine = quota.claims_of(listed, self._owner, grace_s=self.req.claim_grace_s, ignore=self._old_claims())
        ids = set(got.ids)
        if not quota.came_second(mine, ids, quota_n):
            return
        # Claims of the same second: the hosts' own times, to the nanosecond, decide.
        close: dict[str, list[str]] = {}
        for c in quota.same_second(mine, ids):
            close.setdefault(c.host, []).append(c.container.id)
        exact: dict[str, float] = {}
        for host, host_ids in close.items():
            exact |= quota.created_times(self.pool.get(self.inv.host(host)), host_ids)

        def when(c: Claim) -> float:
            return exact.get(c.container.id, float(c.container.created_s or 0))

        if quota.came_second(mine, ids, quota_n, when=when):
            others = [c for c in mine if c.container.id not in ids]
            raise quota.QuotaExceeded(
                f"{self._owner} may hold {quota_n} GPU(s) through forge: another run of theirs claimed "
                f"GPUs at the same time and came first (now held: {quota.describe(quota.holdings(others))})",
                hint="stop an environment (`forge stop ENV`) or ask for fewer GPUs (--gpus)",
            )

    # ------------------------------------------------------------------ whole-run steps

    def _image_source(self) -> tuple[str, Host | None]:
        """(image to launch, host to ship it from; None: it must already be on the target)."""
        req, current = self.req, self.current
        mark = self.reclaimed
        if mark is not None and current is None:  # reclaimed, and its container removed since
            self.progress.note(f"bringing {req.env} back from {mark.image} on {mark.host}")
            return mark.image, self.inv.host(mark.host)
        if req.keep_changes or mark is not None:
            if current is None:
                raise EnvError(f"--keep-changes: environment {req.env!r} does not run anywhere")
            s = self.pool.get(self.inv.host(current.host))
            tag = keep_tag(req.env, current.owner or s.me)
            self.progress.note(f"committing {current.container.name} on {s.name} as {tag}")
            s.run(
                s.docker("commit", "-m", "forge migrate --keep-changes", current.container.id, tag),
                timeout=600,
                check=True,
            )
            self.steps.undo(f"image {tag} on {s.name}", lambda: s.run(s.docker("rmi", tag), timeout=120))
            return tag, s.host
        if not req.image:
            raise EnvError("no image to run", hint="set [environment].image in hosts.toml or pass --image")
        if req.image_from:
            return req.image, self.inv.host(req.image_from)
        return req.image, self.inv.host(current.host) if current else None

    def _finish(self, result: Result) -> Result:
        """Remove the old environment (its container, claims, committed image)."""
        current, mark = self.current, self.reclaimed
        if current is None and mark is not None:  # back from a reclaim whose container was removed
            s = self.pool.get(self.inv.host(mark.host))
            s.run(s.docker("rmi", mark.image), timeout=120)  # refused while the new one runs on it
            envs.forget(s, [mark])
        if current is None or self.listings is None:
            return result
        result.old_host, result.old_container = current.host, current.container.name
        self.progress.note(f"removing the old container {current.container.name} on {current.host}")
        keep = result.image if self.req.keep_changes or self.reclaimed else None
        try:
            s = self.pool.get(self.inv.host(current.host))
            result.warnings += envs.retire(s, current, envs.listing_of(self.listings, current.host), keep_image=keep)
        except ForgeError as e:
            result.warnings.append(f"{current.host}: cleaning up the old environment: {e}")
        return result

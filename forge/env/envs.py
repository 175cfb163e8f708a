"""Environments across the fleet: where one runs, and stopping it (``forge ps``, ``forge stop``,
``forge ssh``, and the first step of ``forge migrate``).

Each host is listed with one command (:mod:`forge.env.listing`); an environment is a container
labelled ``forge.env=NAME`` whose ``forge.owner`` is the SSH user of its host. Labels are written
by whoever runs docker there, so a name that matches twice is an error, never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from forge import fleet
from forge.env import claims, hostvolumes, idle, launch
from forge.env.errors import EnvError
from forge.env.idle import Mark
from forge.env.listing import Environment, HostListing, list_host
from forge.env.names import KEEP_REPO
from forge.fleet import FleetResult, Pool
from forge.inventory import Host, Inventory
from forge.session import HostSession, user_on


def list_fleet(hosts: Sequence[Host], pool: Pool, *, volumes: bool = False) -> FleetResult[HostListing]:
    """Every host's containers (and with ``volumes`` its line for GPUs and idle marks), in parallel, one round
    trip each."""
    return fleet.run(hosts, partial(list_host, volumes=volumes), pool=pool)


def find(listings: FleetResult[HostListing], env: str) -> list[Environment]:
    """The containers of environment ``env`` owned by the SSH user of their host."""
    found = []
    for r in listings.succeeded:
        assert r.value is not None
        found += [e for e in r.value.environments if e.name == env and e.owner == user_on(r.host)]
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


def listing_of(listings: FleetResult[HostListing], host: str) -> HostListing:
    return next(r.value for r in listings.succeeded if r.host.name == host and r.value is not None)


def kept_image(env: Environment) -> str | None:
    """The ``--keep-changes`` commit the container runs, which forge made and nothing else uses
    (``docker rmi`` without -f still refuses if something does)."""
    image = env.container.image
    return image if image.startswith(KEEP_REPO + "/") else None


def retire(s: HostSession, env: Environment, listing: HostListing, *, keep_image: str | None = None) -> list[str]:
    """Remove an environment's container, its claims (found in ``listing``, which located it:
    its claims predate it) and the committed image it ran; problems become warnings."""
    warnings = []
    if not launch.remove(s, env.container.id):
        warnings.append(f"could not remove the old container {env.container.name} on {s.name}")
    claims.release(s, claims.claims_for(listing, env.container.name))
    marks = [m for m in listing.marks if m.subject == env.container.id]
    reclaimed = [m.image for m in marks if m.kind == "reclaimed" and idle.is_reclaim_image(m, env.name, env.owner)]
    images = [i for i in (keep_image, kept_image(env), *reclaimed) if i]
    if images:
        s.run(s.docker("rmi", *dict.fromkeys(images)), timeout=120)
    forget(s, marks)
    return warnings


def forget(s: HostSession, marks: Sequence[Mark]) -> None:
    """Remove idle marks (forge/env/idle.py) of an environment that is gone or back."""
    hostvolumes.remove(s, [m.name for m in marks])


def reclaimed(listings: FleetResult[HostListing], env: str, current: Environment | None) -> Mark | None:
    """Where ``forge reclaim`` left environment ``env``'s changes: the reclaimed mark of its
    stopped container, or, when the container is gone, the newest reclaimed mark of the user's
    environment of that name; None when it was not reclaimed."""
    found = []
    for r in listings.succeeded:
        assert r.value is not None
        me, names = user_on(r.host), {e.container.id for e in r.value.environments}
        for m in r.value.marks:
            if m.kind != "reclaimed" or not idle.is_reclaim_image(m, env, me):
                continue
            if current is not None and current.container.state != "running" and m.subject == current.container.id:
                return m
            if current is None and m.env == env and m.owner == me and m.subject not in names:
                found.append(m)
    return max(found, key=lambda m: m.since) if found else None


def stop(inv: Inventory, env: str, pool: Pool, *, hosts: Sequence[Host] | None = None) -> Environment | None:
    """Stop and remove ``env``'s container, release its claims, and remove the ``--keep-changes``
    image it ran (and a reclaim's image and marks); None when it runs nowhere."""
    listings = list_fleet(hosts or inv.hosts, pool, volumes=True)  # the idle marks too
    current = locate(inv, env, pool, listings=listings)
    if current is None:
        return None
    retire(pool.get(inv.host(current.host)), current, listing_of(listings, current.host))
    return current

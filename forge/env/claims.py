"""GPU claims: who gets a GPU when two people ask at once.

A claim is a container named ``forge-claim-<GPU UUID>``, created (never started) on the GPU's
host right before the environment container. The Docker daemon refuses a second container of
the same name, so exactly one of any number of concurrent claimers gets a GPU (seen with 20 at
once). The claim names the environment container it is for and lives as long as that container
does; a claim whose container is gone is stale once it is older than a grace period, and
whoever lists the host next removes it (by container ID, so a fresh claim of the same name is
never removed by mistake).

The name holds the UUID, not the host's inventory name: two people's inventories may call one
server differently, and the daemon is per host anyway.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence

from forge import labels
from forge.dockercli import is_container_id
from forge.env.errors import ClaimConflict
from forge.env.listing import CLAIM, CLAIM_CONTAINER, CLAIM_ENV, CLAIM_OWNER, HostListing
from forge.env.steps import ctrl_c_held
from forge.errors import CommandFailed, ForgeError
from forge.session import HostSession

PREFIX = "forge-claim-"
DEFAULT_GRACE_S = labels.CLAIM_GRACE_S
_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_CONFLICT = ("Conflict", "is already in use")


def claim_name(gpu: str) -> str:
    return PREFIX + _UNSAFE.sub("_", gpu)


def claim_args(gpu: str, *, image: str, env: str, owner: str, container: str) -> list[str]:
    """``docker`` arguments creating the claim container: no network, never started."""
    return [
        "create",
        "--name",
        claim_name(gpu),
        "--network",
        "none",
        "--label",
        f"{CLAIM}={gpu}",
        "--label",
        f"{CLAIM_ENV}={env}",
        "--label",
        f"{CLAIM_OWNER}={owner}",
        "--label",
        f"{CLAIM_CONTAINER}={container}",
        "--entrypoint",
        "true",
        image,
    ]


def claim(
    s: HostSession,
    gpus: Iterable[str],
    *,
    image: str,
    env: str,
    owner: str,
    container: str,
    timeout: float = 60.0,
) -> tuple[str, ...]:
    """Claim every GPU in ``gpus`` or none: returns the claim containers' IDs.

    Raises :class:`ClaimConflict` when another run holds one of them. Whatever ends it early
    (that, a failure, a timeout, Ctrl-C) releases the claims it made first: the caller's undo
    does not know them yet. A ``docker create`` under way when Ctrl-C comes is waited for (the
    host goes on with it), so its claim is released too instead of holding the GPU until stale.
    """
    taken: list[str] = []
    try:
        for gpu in sorted(gpus):
            argv = s.docker(*claim_args(gpu, image=image, env=env, owner=owner, container=container))
            with ctrl_c_held():  # the claim made is recorded before Ctrl-C goes on
                r = s.run(argv, timeout=timeout)
                if r.ok:  # docker prints the new container's ID; else its name, just made, is ours
                    printed = (r.stdout.strip().splitlines() or [""])[-1]
                    taken.append(printed if is_container_id(printed) else claim_name(gpu))
            if not r.ok:
                if any(word in r.stderr for word in _CONFLICT):
                    raise ClaimConflict(s.name, gpu)
                raise CommandFailed(s.name, r.command, r.exit_status, r.stderr)
    except BaseException:
        with contextlib.suppress(ForgeError):
            release(s, taken)
        raise
    return tuple(taken)


def release(s: HostSession, ids: Sequence[str], *, timeout: float = 60.0) -> None:
    """Remove claims by container ID (a claim already gone is fine)."""
    if ids:
        s.run(s.docker("rm", "-f", *ids), timeout=timeout)


def claimed_gpus(listing: HostListing, *, grace_s: float = DEFAULT_GRACE_S) -> frozenset[str]:
    """GPUs held by live claims on the host."""
    return frozenset(c.gpu for c in listing.live_claims(grace_s=grace_s))


def remove_stale(s: HostSession, listing: HostListing, *, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """Remove the host's stale claims; returns the GPUs they were for."""
    stale = listing.stale_claims(grace_s=grace_s)
    release(s, [c.container.id for c in stale])
    return [c.gpu for c in stale]


def claims_for(listing: HostListing, container: str) -> list[str]:
    """IDs of the claims made for ``container`` (to release with it)."""
    return [c.container.id for c in listing.claims if c.for_container == container]

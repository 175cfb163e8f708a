"""GPU quotas: at most ``[policy] max_gpus_per_user`` GPUs held per user through forge, with no
server (see docs/sharing.md).

What a user holds is what their live claims say, on every host that answers: each GPU of a
forge environment has a claim container (:mod:`forge.env.claims`) that lives as long as the
environment. ``forge migrate`` checks twice:

1. before it chooses a host: what the user holds plus what they ask must fit the quota;
2. after it has claimed GPUs: it lists the user's claims on the fleet again and orders them by
   (creation time on their host, claim container ID). Claims past the quota in that order lose:
   their run releases them and refuses. Two runs of one user racing for the last GPUs of the
   quota see the same order, so exactly one of them gets them.

The GPUs of the environment being migrated are not counted (they are released once the new
one answers). The bound of the race: the order uses each host's clock, so two claims made on
hosts whose clocks disagree by more than the time between the claims can each be first in
the eyes of its own run; a host that does not answer hides its claims. Each can let a user
hold one request more than the quota, never lose one they had.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from forge.env.errors import EnvError
from forge.env.listing import Claim, HostListing


class QuotaExceeded(EnvError):
    """The user would hold more GPUs than ``[policy]`` allows."""


@dataclass(frozen=True)
class Holding:
    """GPUs a user holds for one environment on one host."""

    host: str
    env: str
    gpus: int


def claims_of(
    listings: Iterable[HostListing], owner: str, *, grace_s: float, ignore: Collection[str] = ()
) -> list[Claim]:
    """The owner's live claims on these hosts, less the claim containers in ``ignore`` (IDs)."""
    out = []
    for listing in listings:
        out += [c for c in listing.live_claims(grace_s=grace_s) if c.owner == owner and c.container.id not in ignore]
    return out


def holdings(claims: Iterable[Claim]) -> list[Holding]:
    """Claims summed per host and environment, most GPUs first."""
    count: dict[tuple[str, str], int] = {}
    for c in claims:
        key = (c.host, c.env or "?")
        count[key] = count.get(key, 0) + 1
    return sorted((Holding(h, e, n) for (h, e), n in count.items()), key=lambda x: (-x.gpus, x.host, x.env))


def describe(held: Iterable[Holding]) -> str:
    parts = [f"{h.gpus} on {h.host} for {h.env!r}" for h in held]
    return ", ".join(parts) if parts else "none"


def check(owner: str, quota: int | None, held: list[Holding], asking: int) -> None:
    """Refuse (:class:`QuotaExceeded`) when ``held`` plus ``asking`` GPUs exceed ``quota``."""
    if quota is None:
        return
    total = sum(h.gpus for h in held)
    if total + asking > quota:
        raise QuotaExceeded(
            f"{owner} may hold {quota} GPU(s) through forge and holds {total} ({describe(held)}): "
            f"{asking} more would be {total + asking}",
            hint="stop an environment (`forge ps`, `forge stop ENV`), ask for fewer GPUs (--gpus), "
            "or raise [policy] max_gpus in hosts.toml",
        )


def losers(claims: Iterable[Claim], quota: int) -> set[str]:
    """IDs of the claims past ``quota`` when every claim is ordered by (creation time on its
    host, container ID): what the runs that made them must give back. Pure: every run that
    sees the same claims computes the same answer."""
    ordered = sorted(claims, key=lambda c: (c.container.created_s or 0, c.container.id))
    return {c.container.id for c in ordered[quota:]}

"""GPU quotas: at most ``[policy] max_gpus_per_user`` GPUs held per user through forge, with no
server (see docs/sharing.md).

What a user holds is what their live claims say, on every host that answers: each GPU of a
forge environment has a claim container (:mod:`forge.env.claims`) that lives as long as the
environment. ``forge migrate`` checks twice:

1. before it chooses a host: what the user holds plus what they ask must fit the quota;
2. after it has claimed GPUs: it lists the user's claims on the fleet again; when the claims
   made up to the second of its own (a claim of the same second counts as first) and its own
   exceed the quota, it releases its claims and refuses (:func:`came_second`). Of two runs of
   one user racing for the last GPU of the quota, at most one keeps it.

The GPUs of the environment being migrated are not counted (they are released once the new
one answers). The bound of the race: the order uses each host's clock, so two claims made on
hosts whose clocks disagree by more than the time between the claims can each look second to
the other; a host that does not answer hides its claims. Each can let a user hold one
request more than the quota, never lose one they had.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from forge.env.errors import EnvError
from forge.env.listing import Claim, HostListing
from forge.gpu.holders import env_name
from forge.session import HostSession


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
        key = (c.host, env_name(c.env) or "?")  # a label from the host: not a name, "?"
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


def came_second(
    claims: Iterable[Claim], mine: Collection[str], quota: int, *, when: Callable[[Claim], float] | None = None
) -> bool:
    """Whether the run whose claims are ``mine`` (IDs) must give them back: the user's other
    claims made up to the second of its last one (the order is by creation time on the hosts,
    to the second; a claim of the same second counts as first) and its own exceed ``quota``.

    Of two runs racing for the last GPU, the one that checks first either does not see the
    other's claim yet (made later, so not ahead of the other's own) or sees it ahead of its
    own: the two can never both keep their claims while the hosts' clocks agree. Both can
    stop, when their claims fall in the same second: ``when`` then gives finer times (the
    hosts' own, to the nanosecond: :func:`created_times`)."""
    at = when or (lambda c: float(c.container.created_s or 0))
    claims = list(claims)
    own = [c for c in claims if c.container.id in mine]
    if not own:
        return False
    last = max(at(c) for c in own)
    ahead = [c for c in claims if c.container.id not in mine and at(c) <= last]
    return len(ahead) + len(own) > quota


def same_second(claims: Iterable[Claim], mine: Collection[str]) -> list[Claim]:
    """The claims made in a second that one of ``mine`` was made in (theirs and ours): what
    :func:`came_second` needs finer times for."""
    claims = list(claims)
    seconds = {c.container.created_s for c in claims if c.container.id in mine}
    return [c for c in claims if c.container.created_s in seconds]


_CREATED = re.compile(r"^([0-9a-f]{64}) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")


def parse_created(stdout: str) -> dict[str, float]:
    """``docker inspect --format '{{.Id}} {{.Created}}'`` lines (UTC, RFC 3339 to the nanosecond)
    as Unix times; lines that are not exactly that are left out (the output is the host's)."""
    out = {}
    for line in stdout.splitlines():
        m = _CREATED.match(line.strip())
        if m:
            whole = datetime.strptime(m.group(2), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
            out[m.group(1)] = whole + float(f"0.{m.group(3) or '0'}")
    return out


def created_times(s: HostSession, ids: Sequence[str]) -> dict[str, float]:
    """The creation times of these containers on the host, to the nanosecond (what answers)."""
    if not ids:
        return {}
    r = s.run(s.docker("inspect", "--format", "{{.Id}} {{.Created}}", *ids), timeout=60)
    return parse_created(r.stdout)

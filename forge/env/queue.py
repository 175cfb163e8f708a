"""Waiting in line for GPUs, with no server: ``forge migrate --wait``.

A waiter puts a *ticket* on every host it may land on: a Docker volume (no image needed, seen by
everyone who can run docker there, removable by them too) named ``forge-wait-<ID>-<N>`` whose
labels say who waits, for how many GPUs with how much free memory, since when and until when
(the host's clock). The waiter renews its tickets while it lives (a new ``N``, then the old one
removed); a ticket not renewed by its ``until`` no longer counts, and the next waiter that
lists the host removes it, so a waiter killed with ``kill -9`` stops blocking others after
``[policy] waiter_timeout``.

On each host the tickets form a line, first come first served (:func:`line`). Whoever wants GPUs
there (a waiter, or a plain ``forge migrate``, which counts as last in line) leaves to the
tickets ahead of it the GPUs they would take now (:func:`reserved`): the first ticket that fits
the host's free GPUs takes them, one that does not fit takes nothing, so a later, smaller
request may go ahead while the first still does not fit.

Tickets are read from the host, so they are untrusted: a malformed one is ignored, one that
claims to have been placed in the future or to count for longer than the longest renewal is
ignored too. Anyone who can run docker on the host can still queue in anyone's name; they could
as well run a process on the GPU. The line orders the honest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from forge.env import hostvolumes
from forge.errors import ForgeError
from forge.gpu.model import Gpu
from forge.hostnum import natural
from forge.labels import WAIT, WAIT_ENV, WAIT_GPUS, WAIT_MIN_FREE, WAIT_OWNER, WAIT_SINCE, WAIT_UNTIL
from forge.session import HostSession


@dataclass(frozen=True)
class Ticket:
    """One waiter's place in line on one host."""

    host: str
    name: str  # the volume
    id: str
    seq: int
    owner: str
    env: str
    gpus: int
    min_free_mib: int
    since: int
    until: int


class Listed(Protocol):
    """A host as listed (:class:`forge.env.listing.HostListing`): its clock and its tickets."""

    @property
    def host(self) -> str: ...

    @property
    def now_s(self) -> int: ...

    @property
    def tickets(self) -> tuple[Ticket, ...]: ...


PREFIX = "forge-wait-"
LABELS = (WAIT, WAIT_OWNER, WAIT_ENV, WAIT_GPUS, WAIT_MIN_FREE, WAIT_SINCE, WAIT_UNTIL)
#: The most a ticket may count for past its host's clock without renewal, whatever it says.
MAX_TTL_S = 3600
_ID = re.compile(r"^[0-9a-f]{12,32}\Z")
_NAME = re.compile(r"^forge-wait-([0-9a-f]{12,32})-(\d{1,9})\Z")


def ticket_of(host: str, cols: Sequence[str]) -> Ticket | None:
    """One volume (its name, then the values of LABELS) as a ticket; None when it is not one."""
    name, tid, owner, env, gpus, min_free, since, until = cols
    m = _NAME.match(name)
    if not m or m.group(1) != tid:
        return None
    match tuple(natural(n, 15) for n in (gpus, min_free, since, until)):
        case (int(n_gpus), int(free), int(start), int(end)):
            return Ticket(host, name, tid, int(m.group(2)), owner, env, n_gpus, free, start, end)
    return None


def line(tickets: Iterable[Ticket], now: int) -> list[Ticket]:
    """The host's line at ``now`` (its clock): one ticket per waiter (its newest), those still
    counting, first come first served (then by ID: the same order for everyone)."""
    newest: dict[str, Ticket] = {}
    for t in tickets:
        if t.until <= now or t.until > now + MAX_TTL_S or t.since > now + 5 or t.gpus < 1:
            continue
        if t.id not in newest or t.seq > newest[t.id].seq:
            newest[t.id] = t
    return sorted(newest.values(), key=lambda t: (t.since, t.id))


def expired(tickets: Iterable[Ticket], now: int) -> list[Ticket]:
    """Tickets no longer counting at ``now`` (their waiter is gone or renewed them): to remove."""
    live = {(t.id, t.seq) for t in line(tickets, now)}
    return [t for t in tickets if (t.id, t.seq) not in live and t.until <= now]


def ahead_of(waiting: Sequence[Ticket], me: str | None) -> list[Ticket]:
    """The tickets ahead of waiter ``me`` (None: someone not in line, after everyone)."""
    out = []
    for t in waiting:
        if t.id == me:
            break
        out.append(t)
    return out


def reserved(ahead: Iterable[Ticket], usable: Sequence[Gpu]) -> set[str]:
    """The GPUs (UUIDs) the tickets ahead would take now, in their order, from ``usable`` (the
    host's free GPUs, least loaded first): each takes the first GPUs with the memory it asks
    for when there are enough of them, none otherwise."""
    left = list(usable)
    taken: set[str] = set()
    for t in ahead:
        fit = [g for g in left if t.min_free_mib == 0 or (g.free_memory_mib or 0) >= t.min_free_mib][: t.gpus]
        if len(fit) == t.gpus:
            taken |= {g.uuid for g in fit}
            left = [g for g in left if g.uuid not in taken]
    return taken


def new_id() -> str:
    import secrets

    return secrets.token_hex(8)


def volume_name(tid: str, seq: int) -> str:
    if not _ID.match(tid):
        raise ValueError(f"not a ticket ID: {tid!r}")
    return f"{PREFIX}{tid}-{seq}"


def place(
    s: HostSession, tid: str, seq: int, *, owner: str, env: str, gpus: int, min_free_mib: int, since: int, until: int
) -> str:
    """Create the ticket volume on the host; its name."""
    name = volume_name(tid, seq)
    values = (tid, owner, env, str(gpus), str(min_free_mib), str(since), str(until))
    hostvolumes.create(s, name, dict(zip(LABELS, values, strict=True)))
    return name


remove = hostvolumes.remove  # ticket volumes, by name


class Waiter:
    """One waiter's tickets on the hosts it may land on: placed, renewed, given up.

    ``keep`` is called with each fresh listing of those hosts: it places the ticket where it is
    missing, renews it once a third of ``ttl_s`` has passed, and removes the tickets
    that no longer count (anyone's: their waiters are gone). A host where this fails is left
    without a ticket (the waiter can still land there, it just holds no place in its line)."""

    def __init__(
        self,
        tid: str,
        *,
        owner: str,
        env: str,
        gpus: int,
        min_free_mib: int,
        ttl_s: float,
        session: Callable[[str], HostSession],
    ) -> None:
        self.id, self.owner, self.env, self.gpus, self.min_free_mib = tid, owner, env, gpus, min_free_mib
        self.ttl = max(1, int(ttl_s))
        self.session = session
        self.placed: dict[str, tuple[str, int, int, int]] = {}  # host -> (volume, seq, since, until)
        # Every volume that may exist, noted before it is created: a Ctrl-C between `docker
        # volume create` and its answer must not leave one that leave() does not know of.
        self.names: dict[str, set[str]] = {}

    def keep(self, listings: Iterable[Listed]) -> None:
        for listing in listings:
            try:
                self._keep(listing)
            except ForgeError:
                continue

    def _keep(self, listing: Listed) -> None:
        s = self.session(listing.host)
        now = listing.now_s
        dead = [t.name for t in expired(listing.tickets, now)]
        mine = self.placed.get(listing.host)
        if mine is not None and mine[3] - now > self.ttl * 2 / 3:
            remove(s, dead)
            return
        seq, since = (0, now) if mine is None else (mine[1] + 1, mine[2])
        until = now + self.ttl
        names = self.names.setdefault(listing.host, set())
        names.add(volume_name(self.id, seq))
        name = place(s, self.id, seq, owner=self.owner, env=self.env, gpus=self.gpus,
                     min_free_mib=self.min_free_mib, since=since, until=until)  # fmt: skip
        self.placed[listing.host] = (name, seq, since, until)
        old = [mine[0]] if mine is not None else []
        remove(s, dead + old)
        names.difference_update(old)

    def leave(self) -> None:
        """Remove every ticket this waiter may have placed (best effort: one left behind
        expires by itself)."""
        for host, names in list(self.names.items()):
            try:
                remove(self.session(host), sorted(names))
            except ForgeError:
                continue
            self.names.pop(host, None)
            self.placed.pop(host, None)

    def places(self, listings: Iterable[Listed]) -> list[tuple[str, int, int]]:
        """(host, place in line from 1, waiters) where this waiter's ticket was listed."""
        out = []
        for listing in listings:
            waiting = line(listing.tickets, listing.now_s)
            ids = [t.id for t in waiting]
            if self.id in ids:
                out.append((listing.host, ids.index(self.id) + 1, len(ids)))
        return out

"""The line for GPUs (forge migrate --wait) as pure rules over snapshots: tickets read from a
host's `docker volume ls` (untrusted), the line they form, what the waiters ahead would take."""

from __future__ import annotations

import json

import pytest

from forge.env import idle, queue
from forge.env.listing import parse_listing
from forge.env.queue import Ticket
from tests.unit.test_policy import gpu

ID_A, ID_B, ID_C = "a" * 16, "b" * 16, "c" * 16


def ticket(tid: str, *, gpus: int = 1, since: int = 100, until: int = 200, seq: int = 0, mem: int = 0) -> Ticket:
    return Ticket("gpu1", f"forge-wait-{tid}-{seq}", tid, seq, "alice", "dev", gpus, mem, since, until)


def volume_line(name: str, *values: str) -> str:
    """A line of the listing's volumes (forge/env/listing.py): the ticket labels, then the idle
    marks' (empty)."""
    return "\t".join(json.dumps(v) for v in (name, *values, *[""] * len(idle.LABELS)))


def tickets_in(lines: str) -> tuple[Ticket, ...]:
    return parse_listing("gpu1", f"1000\n@@forge-volumes\n{lines}\n").tickets


def test_tickets_are_read_strictly_from_the_hosts_output() -> None:
    good = volume_line(f"forge-wait-{ID_A}-3", ID_A, "alice", "dev", "2", "16000", "100", "160")
    out = "\n".join([
        good,
        volume_line(f"forge-wait-{ID_B}-0", ID_C, "bob", "x", "1", "0", "100", "160"),  # the name and ID disagree
        volume_line(f"forge-wait-{ID_B}-0", ID_B, "bob", "x", "-1", "0", "100", "160"),  # not a number
        volume_line(f"forge-wait-{ID_B}-0", ID_B, "bob", "x", "\u00b2", "0", "100", "160"),  # isdigit(), not int()
        volume_line(f"forge-wait-{ID_B}-0", ID_B, "bob", "x", "1", "9" * 5000, "100", "160"),  # beyond int()
        volume_line("forge-wait-zz-0", "zz", "bob", "x", "1", "0", "100", "160"),  # not an ID
        volume_line(f"forge-wait-{ID_B}-0", ID_B, "bob", "x", "1", "0", "100"),  # a column short
        "not json\tat all",
    ])  # fmt: skip
    (t,) = tickets_in(out)
    assert t == Ticket("gpu1", f"forge-wait-{ID_A}-3", ID_A, 3, "alice", "dev", 2, 16000, 100, 160)


def test_the_line_is_first_come_first_served_one_ticket_per_waiter_and_only_live_ones() -> None:
    tickets = [
        ticket(ID_B, since=90),
        ticket(ID_A, since=100, seq=0, until=150),
        ticket(ID_A, since=100, seq=1, until=200),  # renewed: the newest counts
        ticket(ID_C, since=80, until=120),  # its waiter is gone: expired at 120
    ]
    assert [(t.id, t.seq) for t in queue.line(tickets, now=130)] == [(ID_B, 0), (ID_A, 1)]
    assert [(t.id, t.seq) for t in queue.expired(tickets, now=130)] == [(ID_C, 0)]
    # a ticket that claims to count for hours, or to have been placed in the future, does not
    planted = [ticket(ID_C, since=0, until=130 + queue.MAX_TTL_S + 1), ticket(ID_B, since=500, until=600)]
    assert queue.line(planted, now=130) == []


def test_ahead_of_a_waiter_or_of_someone_not_in_line() -> None:
    waiting = [ticket(ID_B, since=90), ticket(ID_A, since=100), ticket(ID_C, since=110)]
    assert [t.id for t in queue.ahead_of(waiting, ID_A)] == [ID_B]
    assert [t.id for t in queue.ahead_of(waiting, None)] == [ID_B, ID_A, ID_C]
    assert queue.ahead_of(waiting, ID_B) == []


def test_the_first_that_fits_takes_its_gpus_and_a_smaller_later_one_may_go_ahead() -> None:
    free = [gpu(i, host="gpu1") for i in range(3)]
    big, small = ticket(ID_A, gpus=4), ticket(ID_B, gpus=2)
    # 4 do not fit on 3 free GPUs: the first takes nothing, the second takes two
    assert queue.reserved([big, small], free) == {"GPU-gpu1-0", "GPU-gpu1-1"}
    assert queue.reserved([small, ticket(ID_C, gpus=2)], free) == {"GPU-gpu1-0", "GPU-gpu1-1"}
    assert queue.reserved([], free) == set()


def test_a_ticket_asking_for_memory_takes_only_gpus_with_that_much_free() -> None:
    free = [gpu(0, host="gpu1", used=140000), gpu(1, host="gpu1"), gpu(2, host="gpu1")]
    assert queue.reserved([ticket(ID_A, gpus=1, mem=16000)], free) == {"GPU-gpu1-1"}
    assert queue.reserved([ticket(ID_A, gpus=3, mem=16000)], free) == set()


def test_volume_names_are_built_from_ids_only() -> None:
    assert queue.volume_name(ID_A, 2) == f"forge-wait-{ID_A}-2"
    with pytest.raises(ValueError, match="not a ticket ID"):
        queue.volume_name("../etc", 0)


class FakeHost:
    """Just enough of a HostSession for the waiter: docker argv, and runs recorded. A create
    can be interrupted after it reached the host (a Ctrl-C before its answer came back)."""

    def __init__(self, interrupt_create: bool = False) -> None:
        self.ran: list[list[str]] = []
        self.interrupt_create = interrupt_create

    def docker(self, *args: str) -> list[str]:
        return ["docker", *args]

    def run(self, command: list[str], *, timeout: float | None = None, check: bool = False) -> None:
        self.ran.append(command)
        if self.interrupt_create and command[1:3] == ["volume", "create"]:
            raise KeyboardInterrupt


class Listing:
    def __init__(self, host: str, now_s: int, tickets: tuple[Ticket, ...] = ()) -> None:
        self.host, self.now_s, self.tickets = host, now_s, tickets


def test_a_waiter_leaves_even_a_ticket_whose_creation_was_interrupted() -> None:
    hosts = {"gpu1": FakeHost(), "gpu2": FakeHost(interrupt_create=True)}
    w = queue.Waiter(ID_A, owner="alice", env="dev", gpus=1, min_free_mib=0, ttl_s=60, session=hosts.__getitem__)
    with pytest.raises(KeyboardInterrupt):
        w.keep([Listing("gpu1", 1000), Listing("gpu2", 1000)])
    w.leave()
    assert hosts["gpu1"].ran[-1] == ["docker", "volume", "rm", "-f", f"forge-wait-{ID_A}-0"]
    assert hosts["gpu2"].ran[-1] == ["docker", "volume", "rm", "-f", f"forge-wait-{ID_A}-0"]


def test_a_waiter_renews_before_its_ticket_expires_and_removes_the_old_one() -> None:
    host = FakeHost()
    w = queue.Waiter(ID_A, owner="alice", env="dev", gpus=1, min_free_mib=0, ttl_s=30, session=lambda _: host)
    w.keep([Listing("gpu1", 1000)])
    w.keep([Listing("gpu1", 1005)])  # a sixth of the time: nothing to do
    assert [c[1:3] for c in host.ran] == [["volume", "create"]]
    w.keep([Listing("gpu1", 1011)])  # past a third: a new ticket, then the old one goes
    created = [c for c in host.ran if c[1:3] == ["volume", "create"]]
    assert created[-1][-1] == f"forge-wait-{ID_A}-1"
    assert "forge.wait.since=1000" in created[-1] and f"forge.wait.until={1011 + 30}" in created[-1]
    assert host.ran[-1] == ["docker", "volume", "rm", "-f", f"forge-wait-{ID_A}-0"]
    w.leave()
    assert host.ran[-1] == ["docker", "volume", "rm", "-f", f"forge-wait-{ID_A}-1"]

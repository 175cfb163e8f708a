"""The fleet runner with fake transports: order, errors per host, deadlines."""

from __future__ import annotations

import time
from typing import IO

from forge import fleet
from forge.errors import CommandFailed, ConnectError
from forge.inventory import Host
from forge.transport.base import Command, CommandResult, Transport


class Fake(Transport):
    def __init__(self, name: str, behaviour: str) -> None:
        self.name = name
        self.behaviour = behaviour
        self.closed = False

    def run(
        self, command: Command, *, timeout: float | None = None, stdin: bytes | None = None, check: bool = False
    ) -> CommandResult:
        if self.behaviour == "down":
            raise ConnectError(self.name, "connection refused")
        if self.behaviour == "slow":
            time.sleep(5)
        if self.behaviour == "bug":
            raise ZeroDivisionError("oops")
        status = 1 if self.behaviour == "fail" else 0
        r = CommandResult(self.name, "cmd", status, self.name, "bad" if status else "", 0.0)
        return r.check() if check else r

    def stream(
        self,
        command: Command,
        *,
        source: IO[bytes] | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


def hosts(*names: str) -> list[Host]:
    return [Host(name=n, address=n) for n in names]


def test_every_host_gets_a_result_in_order() -> None:
    behaviours = {"a": "ok", "b": "down", "c": "fail", "d": "bug", "e": "ok"}
    fakes: dict[str, Fake] = {}

    def connector(h: Host) -> Fake:
        fakes[h.name] = Fake(h.name, behaviours[h.name])
        return fakes[h.name]

    with fleet.Pool(connector) as pool:
        res = fleet.run(hosts(*behaviours), lambda t: t.run(["x"], check=True).stdout, pool=pool, concurrency=2)
    assert [r.host.name for r in res] == list(behaviours)
    assert [r.host.name for r in res.succeeded] == ["a", "e"]
    assert res["a"].value == "a"
    assert isinstance(res["b"].error, ConnectError) and res["b"].reason == "connection refused"
    assert isinstance(res["c"].error, CommandFailed)
    assert "ZeroDivisionError: oops" in res["d"].reason
    assert all(f.closed for f in fakes.values())


def test_deadline_reports_the_slow_host_and_keeps_the_others() -> None:
    behaviours = {"fast": "ok", "slow": "slow"}
    with fleet.Pool(lambda h: Fake(h.name, behaviours[h.name])) as pool:
        started = time.monotonic()
        res = fleet.run(hosts("slow", "fast"), lambda t: t.run(["x"]).stdout, pool=pool, deadline_s=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert res["fast"].ok and not res["slow"].ok
    assert "no answer within 0.5 s" in res["slow"].reason


def test_connections_are_reused_within_a_pool() -> None:
    made: list[str] = []

    def connector(h: Host) -> Fake:
        made.append(h.name)
        return Fake(h.name, "ok")

    with fleet.Pool(connector) as pool:
        for _ in range(3):
            fleet.run(hosts("a", "b"), lambda t: t.run(["x"]), pool=pool)
    assert sorted(made) == ["a", "b"]

"""The fleet runner with fake transports: order, errors per host, deadlines."""

from __future__ import annotations

import time

from forge import fleet
from forge.errors import CommandFailed, ConnectError
from forge.inventory import Host
from tests.unit.fakes import FakeTransport


def fake(name: str, behaviour: str) -> FakeTransport:
    """A host that answers `x` as ``behaviour`` says: ok, down, fail, slow, or a bug in forge."""
    answers: dict[str, dict[str, object]] = {
        "ok": {"stdout": name},
        "down": {"raises": ConnectError(name, "connection refused")},
        "fail": {"status": 1, "stderr": "bad"},
        "slow": {"stdout": name, "delay_s": 5.0},
        "bug": {"raises": ZeroDivisionError("oops")},
    }
    return FakeTransport(name).on("x", **answers[behaviour])


def hosts(*names: str) -> list[Host]:
    return [Host(name=n, address=n) for n in names]


def test_every_host_gets_a_result_in_order() -> None:
    behaviours = {"a": "ok", "b": "down", "c": "fail", "d": "bug", "e": "ok"}
    fakes: dict[str, FakeTransport] = {}

    def connector(h: Host) -> FakeTransport:
        fakes[h.name] = fake(h.name, behaviours[h.name])
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
    with fleet.Pool(lambda h: fake(h.name, behaviours[h.name])) as pool:
        started = time.monotonic()
        res = fleet.run(hosts("slow", "fast"), lambda t: t.run(["x"]).stdout, pool=pool, deadline_s=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert res["fast"].ok and not res["slow"].ok
    assert "no answer within 0.5 s" in res["slow"].reason


def test_connections_are_reused_within_a_pool() -> None:
    made: list[str] = []

    def connector(h: Host) -> FakeTransport:
        made.append(h.name)
        return fake(h.name, "ok")

    with fleet.Pool(connector) as pool:
        for _ in range(3):
            fleet.run(hosts("a", "b"), lambda t: t.run(["x"]), pool=pool)
    assert sorted(made) == ["a", "b"]


def test_operations_from_the_main_thread_reuse_their_threads_until_a_host_hangs_one() -> None:
    import threading

    behaviours = {"a": "ok", "b": "ok", "slow": "slow"}
    seen: list[threading.Thread] = []  # kept alive: no thread's identity is reused

    def who(t: object) -> threading.Thread:
        seen.append(threading.current_thread())
        return threading.current_thread()

    with fleet.Pool(lambda h: fake(h.name, behaviours[h.name])) as pool:
        for _ in range(20):
            fleet.run(hosts("a", "b"), who, pool=pool, concurrency=2)
        kept = set(seen)
        assert len(kept) <= 2  # 20 operations on the same two threads, not 40 new ones
        res = fleet.run(hosts("slow", "a"), lambda t: t.run(["x"]).stdout, pool=pool, concurrency=2, deadline_s=0.3)
        assert not res["slow"].ok  # it still holds a thread of those: they are not kept
        after = {r.value for r in fleet.run(hosts("a", "b"), who, pool=pool, concurrency=2)}
        assert after and not after & kept


def test_an_operation_run_inside_another_gets_its_own_threads() -> None:
    """A host's work that runs a fleet operation itself (one thread per host at most) must
    not wait for the threads it is using."""
    with fleet.Pool(lambda h: fake(h.name, "ok")) as pool:

        def inner(t: object) -> list[str]:
            return [r.host.name for r in fleet.run(hosts("a", "b"), lambda s: s.name, pool=pool, concurrency=1)]

        res = fleet.run(hosts("a"), inner, pool=pool, concurrency=1, deadline_s=10)
    assert res["a"].value == ["a", "b"]


def test_one_exit_code_rule_for_every_fleet_command() -> None:
    from forge.errors import ExitCode

    assert fleet.exit_code([(True, True), (True, True)]) == ExitCode.OK
    assert fleet.exit_code([(True, True), (False, False)]) == ExitCode.PARTIAL  # one did not answer
    assert fleet.exit_code([(True, True), (True, False)]) == ExitCode.PARTIAL  # one answered, unserved
    assert fleet.exit_code([(False, False), (False, False)]) == ExitCode.UNREACHABLE
    assert fleet.exit_code([(True, False)]) == ExitCode.PARTIAL  # answered: not unreachable
    assert fleet.exit_code([]) == ExitCode.OK


def test_a_host_session_builds_its_daemons_docker_commands() -> None:
    from tests.unit.fakes import session

    plain = session(Host(name="a", address="a", user="ana"))
    assert plain.docker("ps", "-a") == ["docker", "ps", "-a"] and plain.me == "ana"
    socket = session(Host(name="b", address="b", docker_host="unix:///run/user/1000/docker.sock"))
    assert socket.docker("ps") == ["docker", "-H", "unix:///run/user/1000/docker.sock", "ps"]
    assert socket.docker_words == ["docker", "-H", "unix:///run/user/1000/docker.sock"]


def test_a_closed_pool_hands_out_no_connection_and_a_second_close_waits_for_the_first() -> None:
    """Ctrl-C in `forge gpus --watch` closes the pool from a thread of its own, and the run's
    end closes it again: that second close must not return (and the process exit) while the
    first is still closing connections. A host's thread still at work gets no new one."""
    import threading

    release, ending = threading.Event(), threading.Event()

    class Slow(FakeTransport):
        def close(self) -> None:
            ending.set()
            release.wait(10)
            super().close()

    made: list[Slow] = []

    def connector(h: Host) -> Slow:
        made.append(Slow(h.name))
        return made[-1]

    pool = fleet.Pool(connector)
    pool.get(hosts("a")[0])
    first = threading.Thread(target=pool.close)
    first.start()
    assert ending.wait(10)
    second = threading.Thread(target=pool.close)
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waits for the first close
    try:
        pool.get(hosts("b")[0])
    except ConnectError as e:
        assert e.host == "b" and "the run is ending" in str(e)
    else:
        raise AssertionError("a closed pool handed out a connection")
    release.set()
    first.join(10)
    second.join(10)
    assert not second.is_alive() and [t.closed for t in made] == [True]

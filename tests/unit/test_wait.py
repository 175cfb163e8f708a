"""The wait loop of `forge gpus --wait` as a pure function over a sequence of snapshots, with a
clock and a stop event that the test drives (no sleeping, no probe)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from forge.errors import ExitCode
from forge.gpu.model import ProbeStatus
from forge.gpu.wait import NeverFits, Waiting, WaitTimedOut, never_fits, wait_until
from tests.unit.test_policy import gpu, host


class Clock:
    """Time that moves only when the loop waits (the stop event's wait) or a probe is made."""

    def __init__(self, probe_s: float = 0.0) -> None:
        self.now = 0.0
        self.probe_s = probe_s

    def __call__(self) -> float:
        return self.now


class Ticking(threading.Event):
    """A stop event whose wait advances the clock instead of sleeping; set after ``stop_after``
    waits when given."""

    def __init__(self, clock: Clock, stop_after: int | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        self.clock.now += timeout or 0.0
        if self.stop_after is not None and len(self.waits) >= self.stop_after:
            self.set()
        return self.is_set()


def probes(clock: Clock, snapshots: list[int]) -> Iterator[int]:
    for s in snapshots:
        clock.now += clock.probe_s
        yield s


def test_returns_the_first_snapshot_that_fits_and_reports_every_miss() -> None:
    clock = Clock(probe_s=0.5)
    stop = Ticking(clock)
    seen = probes(clock, [0, 1, 3, 4])
    missed: list[Waiting[int]] = []
    snap, got = wait_until(
        lambda: next(seen), lambda s: f"fits {s}" if s >= 2 else None, interval=5, stop=stop,
        on_wait=missed.append, clock=clock,
    )  # fmt: skip
    assert (snap, got) == (3, "fits 3")
    assert [(w.snapshot, w.probes, w.waited_s) for w in missed] == [(0, 1, 0.5), (1, 2, 6.0)]
    assert stop.waits == [5, 5]


def test_times_out_after_the_probe_that_crosses_the_limit_never_sleeping_past_it() -> None:
    clock = Clock(probe_s=1.0)
    stop = Ticking(clock)
    seen = probes(clock, [0] * 10)
    with pytest.raises(WaitTimedOut) as e:
        wait_until(lambda: next(seen), lambda s: None, interval=4, timeout=10, stop=stop, what="2 GPUs", clock=clock)
    # probes take 1 s: 0-1, pause 4, 5-6, pause cut to the 4 s left, 10-11, over
    assert stop.waits == [4, 4]
    assert clock.now == 11.0
    assert e.value.exit_code == ExitCode.TIMED_OUT == 7
    assert str(e.value).startswith("2 GPUs did not fit within 10s (3 probes)")


def test_the_last_pause_is_cut_to_what_is_left() -> None:
    clock = Clock()
    stop = Ticking(clock)
    with pytest.raises(WaitTimedOut):
        wait_until(lambda: 0, lambda s: None, interval=4, timeout=10, stop=stop, clock=clock)
    assert stop.waits == [4, 4, 2]  # probes at 0, 4, 8 and 10


def test_a_fit_at_the_last_probe_is_served() -> None:
    clock = Clock(probe_s=1.0)
    stop = Ticking(clock)
    seen = probes(clock, [0, 0, 1])
    assert wait_until(lambda: next(seen), lambda s: s or None, interval=4, timeout=10, stop=stop, clock=clock) == (1, 1)


def test_stop_ends_the_wait_as_an_interrupt() -> None:
    clock = Clock()
    stop = Ticking(clock, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        wait_until(lambda: 0, lambda s: None, interval=1, stop=stop, clock=clock)
    assert len(stop.waits) == 2


def test_a_probe_cut_short_by_stop_is_not_offered_to_fit() -> None:
    stop = threading.Event()
    offered: list[int] = []

    def probe() -> int:
        stop.set()  # Ctrl-C arrived while the probe ran
        return 1

    with pytest.raises(KeyboardInterrupt):
        wait_until(probe, lambda s: offered.append(s), interval=1, stop=stop)
    assert offered == []


def test_never_fits_only_when_every_host_answered_and_none_has_that_many_gpus() -> None:
    four = host("a", [gpu(i, host="a") for i in range(4)])
    two = host("b", [gpu(i, host="b") for i in range(2)])
    unread = host("c", [], status=ProbeStatus.DRIVER_ERROR)
    none = host("d", [], status=ProbeStatus.NO_GPUS)
    assert never_fits([four, two], 4) is None
    assert never_fits([four, two], 5) == "no host has 5 GPUs (the most on one host is 4)"
    assert never_fits([two, unread], 3) is None  # a host whose GPUs were not read may have them
    assert never_fits([two, none], 3) == "no host has 3 GPUs (the most on one host is 2)"
    assert never_fits([], 1) is None


def test_fit_may_say_it_never_fits() -> None:
    def fit(s: int) -> None:
        raise NeverFits("no host has 9 GPUs")

    with pytest.raises(NeverFits):
        wait_until(lambda: 0, fit, interval=1, stop=threading.Event())

"""Waiting for GPUs instead of polling by hand: probe the fleet every ``interval`` seconds until
a request fits, the time runs out, or the caller stops it.

The loop is separate from the probe and from the rule of what fits, so it is tested as a pure
function over a sequence of snapshots (tests/unit/test_wait.py), and `forge gpus --wait`,
scripts and later `migrate --wait` share it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from forge.durations import format_duration
from forge.errors import ExitCode, ForgeError
from forge.gpu.model import HostGpus, ProbeStatus

S = TypeVar("S")  # a snapshot of the fleet
R = TypeVar("R")  # what fit


class Stop(Protocol):
    """What ends a wait early: a ``threading.Event``, or a flag a signal handler sets."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class WaitTimedOut(ForgeError):
    """The request did not fit before the wait's time ran out."""

    exit_code = ExitCode.TIMED_OUT


class NeverFits(ForgeError):
    """The request cannot fit on any host of the fleet, however long one waits."""


@dataclass(frozen=True)
class Waiting(Generic[S]):
    """One probe that did not fit: what was seen, how long the wait has lasted."""

    snapshot: S
    probes: int
    waited_s: float


def wait_until(
    probe: Callable[[], S],
    fit: Callable[[S], R | None],
    *,
    interval: float,
    timeout: float | None = None,
    stop: Stop | None = None,
    on_wait: Callable[[Waiting[S]], None] | None = None,
    what: str = "the request",
    clock: Callable[[], float] = time.monotonic,
) -> tuple[S, R]:
    """Probe until ``fit`` returns something (not None) for a snapshot; return both.

    ``timeout`` (seconds, None: no end) is checked after each probe, so a request that fits at
    the last probe is served; :class:`WaitTimedOut` once it has passed. ``stop`` ends the wait
    early with :class:`KeyboardInterrupt` (Ctrl-C handled by the caller). ``on_wait`` hears of
    every probe that did not fit (progress). ``fit`` may raise :class:`NeverFits`.
    """
    stop = stop or threading.Event()
    start = clock()
    probes = 0
    while True:
        snapshot = probe()
        probes += 1
        if stop.is_set():  # interrupted mid-probe: what it saw was cut short
            raise KeyboardInterrupt
        found = fit(snapshot)
        if found is not None:
            return snapshot, found
        waited = clock() - start
        if timeout is not None and waited >= timeout:
            raise WaitTimedOut(f"{what} did not fit within {format_duration(timeout)} ({probes} probes)")
        if on_wait is not None:
            on_wait(Waiting(snapshot, probes, waited))
        pause = interval if timeout is None else max(0.0, min(interval, timeout - waited))
        if stop.wait(pause):
            raise KeyboardInterrupt


def never_fits(hosts: Sequence[HostGpus], count: int) -> str | None:
    """Why ``count`` GPUs on one host can never be free, when every host's GPUs were read (or it
    has none) and none has that many GPUs at all; None when it may still happen."""
    if not hosts or any(h.status in (ProbeStatus.DRIVER_ERROR, ProbeStatus.ERROR) for h in hosts):
        return None
    most = max(len(h.gpus) for h in hosts)
    if most >= count:
        return None
    return f"no host has {count} GPUs (the most on one host is {most})"

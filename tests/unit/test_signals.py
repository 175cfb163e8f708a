"""The flag a signal handler sets (forge/cli/signals.py) and Ctrl-C for loops that redraw."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from forge.cli.output import Interrupt
from forge.cli.signals import SignalFlag, wait_any

# A loop that waits on a flag, as `forge gpus --watch` does between frames, while a storm of
# SIGWINCH (one a millisecond) sets it from the handler. With threading.Event in place of the flag
# this process hung (the handler's Event.set waited for the lock that Event.wait, interrupted,
# held) in 3 runs of 4 and died in the fourth; with the flag it ends in about 2 s: checked.
_STORM = textwrap.dedent(
    """
    import signal, sys
    from forge.cli.signals import SignalFlag
    flag = SignalFlag()
    signal.signal(signal.SIGWINCH, lambda *_: flag.set())
    print("ready", flush=True)
    woken = 0
    while woken < 2000:
        if flag.wait(0.0005):
            flag.clear()
            woken += 1
    print("done", woken, flush=True)
    """
)


def test_a_storm_of_signals_never_hangs_a_loop_that_waits_on_the_flag() -> None:
    child = subprocess.Popen([sys.executable, "-c", _STORM], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60  # a hang, not a timing: it ends in about 2 s
        while child.poll() is None and time.monotonic() < deadline:
            os.kill(child.pid, signal.SIGWINCH)
            time.sleep(0.001)  # a flood with no gap nests handlers until the stack runs out
        assert child.poll() is not None, "the waiting loop stopped answering signals"
        assert child.stdout.read() == "done 2000\n"
        assert child.returncode == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_the_flag_is_an_event() -> None:
    flag = SignalFlag()
    try:
        assert not flag.is_set() and flag.wait(0.01) is False
        threading.Timer(0.05, flag.set).start()
        assert flag.wait(10) is True and flag.is_set()
        assert flag.wait(0) is True  # stays set
        flag.clear()
        assert not flag.is_set() and flag.wait(0.01) is False  # cleared: the pipe drained too
        flag.wake()
        assert flag.wait(10) is False  # woken, not set
    finally:
        flag.close()


def test_wait_any_wakes_for_either_flag() -> None:
    a, b = SignalFlag(), SignalFlag()
    try:
        threading.Timer(0.05, b.set).start()
        wait_any([a, b], 10)
        assert b.is_set() and not a.is_set()
        b.clear()
        started = time.monotonic()
        wait_any([a, b], 0.05)
        assert time.monotonic() - started >= 0.04  # neither set: the whole timeout
    finally:
        a.close()
        b.close()


def test_first_ctrl_c_sets_the_flag_and_runs_on_first_a_second_interrupts() -> None:
    ran = threading.Event()
    before = signal.getsignal(signal.SIGINT)
    with Interrupt(on_first=ran.set) as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(10)
        assert ran.wait(10)  # in the thread waiting for the flag, not in the handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
    assert signal.getsignal(signal.SIGINT) == before


def test_leaving_without_ctrl_c_runs_nothing_and_ends_the_waiting_thread() -> None:
    ran = threading.Event()
    before = threading.active_count()
    with Interrupt(on_first=ran.set) as stop:
        assert threading.active_count() == before + 1
    assert threading.active_count() == before
    assert not ran.is_set() and not stop.is_set()

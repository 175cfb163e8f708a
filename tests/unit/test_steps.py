"""forge migrate's undo runner: a remote command that creates something runs to its end even
when Ctrl-C comes meanwhile, and what it made is recorded, so the undo finds it."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from forge.env.steps import Steps, ctrl_c_held
from forge.errors import ForgeError


def _ctrl_c_in(*seconds: float) -> list[threading.Timer]:
    """Ctrl-C sent to this process after each of ``seconds`` (the kernel hands a process its
    signal on the main thread when that thread takes it)."""
    timers = [threading.Timer(t, os.kill, (os.getpid(), signal.SIGINT)) for t in seconds]
    for t in timers:
        t.start()
    return timers


def test_ctrl_c_waits_for_the_command_and_what_it_made_is_recorded_first() -> None:
    made: list[str] = []
    _ctrl_c_in(0.1, 0.2)  # twice: still held
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), ctrl_c_held():
        time.sleep(0.5)  # the host is still creating the container
        made.append("container")
    assert made == ["container"] and time.monotonic() - started >= 0.5  # the undo then finds it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_ctrl_c_held_is_raised_over_an_error_of_the_block_and_nothing_without_one() -> None:
    _ctrl_c_in(0.05)
    with pytest.raises(KeyboardInterrupt), ctrl_c_held():
        time.sleep(0.2)
        raise ForgeError("the claim was refused")  # the user asked to stop: that goes first
    with pytest.raises(ForgeError, match="no port"), ctrl_c_held():
        raise ForgeError("no port")
    with ctrl_c_held():
        pass


def test_the_handler_in_place_decides_what_a_held_ctrl_c_does() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        _ctrl_c_in(0.05)
        with ctrl_c_held():
            time.sleep(0.2)
            assert seen == []  # held
        assert seen == [signal.SIGINT]  # then handed to it, no KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, old)


def test_off_the_main_thread_the_block_just_runs() -> None:
    ran: list[bool] = []

    def work() -> None:
        with ctrl_c_held():
            ran.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert ran == [True]


def test_steps_undo_newest_first_and_skip_an_undo_that_fails() -> None:
    steps, done = Steps(), []
    steps.undo("a", lambda: done.append("a"))

    def broken() -> None:
        raise ForgeError("gone")

    steps.undo("b", broken)
    steps.undo("c", lambda: done.append("c"))
    assert steps.rollback() == ("c", "a") and done == ["c", "a"]

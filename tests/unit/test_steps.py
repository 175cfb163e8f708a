"""forge migrate's undo runner: a remote command that creates something runs to its end
even when Ctrl-C comes meanwhile, so the undo finds what it made."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from forge.env.steps import Steps, to_the_end
from forge.errors import ForgeError


def test_ctrl_c_waits_for_the_command_then_interrupts() -> None:
    made: list[str] = []

    def docker_run() -> str:
        time.sleep(0.5)  # the host is still creating the container
        made.append("container")
        return "done"

    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C mid-command
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            to_the_end(docker_run)
    finally:
        timer.cancel()
    assert made == ["container"] and time.monotonic() - started >= 0.5  # the undo then finds it


def test_two_ctrl_c_still_wait_and_a_result_or_an_error_comes_back() -> None:
    def slow() -> None:
        time.sleep(0.4)

    timers = [threading.Timer(t, os.kill, (os.getpid(), signal.SIGINT)) for t in (0.1, 0.2)]
    for t in timers:
        t.start()
    with pytest.raises(KeyboardInterrupt):
        to_the_end(slow)
    assert to_the_end(lambda: 42) == 42
    with pytest.raises(ForgeError, match="no port"):
        to_the_end(lambda: (_ for _ in ()).throw(ForgeError("no port")))


def test_steps_undo_newest_first_and_skip_an_undo_that_fails() -> None:
    steps, done = Steps(), []
    steps.undo("a", lambda: done.append("a"))

    def broken() -> None:
        raise ForgeError("gone")

    steps.undo("b", broken)
    steps.undo("c", lambda: done.append("c"))
    assert steps.rollback() == ("c", "a") and done == ["c", "a"]

"""How SSHTransport.run_again falls back when its kept loop breaks (forge/transport/ssh.py),
with the connection replaced by fakes. The loop itself runs for real in test_kept.py, and the
whole path on the lab in tests/lab/test_transport.py."""

from __future__ import annotations

from typing import Any

import pytest

from forge.errors import ConnectError
from forge.inventory import Host
from forge.transport import kept
from forge.transport.base import CommandResult, to_script, with_timeout
from forge.transport.ssh import SSHTransport

SCRIPT = ["sh", "-c", "echo hi"]


class EndedChannel:
    """A loop's channel whose far end has closed."""

    eof_received = 1
    closed = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def settimeout(self, timeout: float | None) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def recv(self, nbytes: int) -> bytes:
        return b""

    def close(self) -> None:
        self.closed = True


def transport_with_ended_loop() -> tuple[SSHTransport, EndedChannel]:
    t = SSHTransport(Host(name="gpu1", address="10.0.0.1"))
    wrapped = with_timeout(to_script(SCRIPT), t.host.command_timeout)
    chan = EndedChannel()
    t._asked.add(wrapped)
    t._kept[wrapped] = kept.KeptLoop("gpu1", chan)
    return t, chan


def test_a_loop_that_ended_is_dropped_and_the_command_run_the_usual_way(monkeypatch: pytest.MonkeyPatch) -> None:
    t, chan = transport_with_ended_loop()
    runs: list[Any] = []

    def run(command: Any, **kw: Any) -> CommandResult:
        runs.append(command)
        return CommandResult("gpu1", "echo hi", 0, "hi\n", "", 0.0)

    monkeypatch.setattr(t, "run", run)
    assert t.run_again(SCRIPT).stdout == "hi\n"
    assert chan.sent == [] and chan.closed
    assert runs == [SCRIPT] and t._kept == {}


def test_when_the_connection_ended_with_the_loop_the_command_runs_once_more_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sshd hangs up on a request sent on a channel it closed: the usual way then finds the
    connection gone (the command never started)."""
    t, _ = transport_with_ended_loop()
    runs: list[Any] = []

    def run(command: Any, **kw: Any) -> CommandResult:
        runs.append(command)
        if len(runs) == 1:
            raise ConnectError("gpu1", "the SSH connection broke: Unable to open channel.")
        return CommandResult("gpu1", "echo hi", 0, "hi\n", "", 0.0)

    monkeypatch.setattr(t, "run", run)
    assert t.run_again(SCRIPT).stdout == "hi\n"
    assert runs == [SCRIPT, SCRIPT]


def test_a_host_still_unreachable_on_the_second_try_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    t, _ = transport_with_ended_loop()
    runs: list[Any] = []

    def run(command: Any, **kw: Any) -> CommandResult:
        runs.append(command)
        raise ConnectError("gpu1", "connection refused by 10.0.0.1:22 (is sshd running?)")

    monkeypatch.setattr(t, "run", run)
    with pytest.raises(ConnectError, match="connection refused"):
        t.run_again(SCRIPT)
    assert len(runs) == 2

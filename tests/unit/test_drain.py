"""How a command's two outputs are read in one thread (SSHTransport._drain, forge/transport/ssh.py):
a real paramiko Channel, fed from another thread the way paramiko's transport thread feeds it
(stdout, stderr, the exit status, the end), without a network."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paramiko
import pytest

from forge.errors import CommandTimeout
from forge.inventory import Host
from forge.transport.base import OutputLimit
from forge.transport.ssh import SSHTransport


def _stderr_message(data: bytes) -> paramiko.Message:
    m = paramiko.Message()
    m.add_int(1)  # SSH_EXTENDED_DATA_STDERR
    m.add_string(data)
    m.rewind()
    return m


def _transport() -> SSHTransport:
    return SSHTransport(Host(name="gpu1", address="10.0.0.1"))


@pytest.mark.parametrize("round_", range(20))
def test_every_byte_of_both_outputs_is_read_up_to_the_end(round_: int) -> None:
    """Outputs interleaved, the end right behind the last bytes: whatever arrives between a
    look at one buffer and a look at the other, or with the end, is read."""
    chan = paramiko.Channel(0)
    out_parts = [f"out {round_} {i}\n".encode() * (1 + i % 7) for i in range(300)]
    err_parts = [f"err {i}\n".encode() for i in range(300)]

    def host() -> None:
        for i, (o, e) in enumerate(zip(out_parts, err_parts, strict=True)):
            chan._feed(o)
            chan._feed_extended(_stderr_message(e))
            if i % 50 == round_ % 50:
                time.sleep(0.001)  # the reader catches up and waits here and there
        chan.exit_status = 3
        chan.status_event.set()
        chan._handle_eof(None)

    feeder = threading.Thread(target=host)
    sink, stderr = OutputLimit("gpu1"), OutputLimit("gpu1", keep="tail")
    feeder.start()
    status = _transport()._drain(chan, sink, stderr, None, time.monotonic() + 30, "late")
    feeder.join()
    assert status == 3
    assert sink.text() == b"".join(out_parts).decode()
    assert stderr.text() == b"".join(err_parts).decode()


def test_no_output_and_no_end_is_a_timeout() -> None:
    chan = paramiko.Channel(0)
    chan._feed(b"partial")
    with pytest.raises(CommandTimeout, match="late"):
        _transport()._drain(chan, OutputLimit("gpu1"), OutputLimit("gpu1"), None, time.monotonic() + 0.3, "late")


def test_a_closed_channel_ends_the_read_with_what_came() -> None:
    """A connection that dropped closes its channels: what came is kept, the status unknown."""
    chan = paramiko.Channel(0)
    chan._feed(b"half a line")
    with chan.lock:  # as paramiko's transport thread closes a connection's channels
        chan._set_closed()
    sink = OutputLimit("gpu1")
    status = _transport()._drain(chan, sink, OutputLimit("gpu1"), None, time.monotonic() + 5, "late")
    assert (status, sink.text()) == (-1, "half a line")


class _Between(paramiko.Channel):
    """A channel on which the host acts at one exact moment: when the reader, having looked at
    stdout, looks at stderr (the narrowest window; two threads hit it only now and then)."""

    def __init__(self, act: Callable[[paramiko.Channel], None]) -> None:
        super().__init__(0)
        self._act: Callable[[paramiko.Channel], None] | None = act

    def recv_stderr_ready(self) -> bool:
        act, self._act = self._act, None
        if act is not None:
            act(self)
        return bool(super().recv_stderr_ready())


def _end(chan: paramiko.Channel, status: int = 0) -> None:
    chan.exit_status = status
    chan.status_event.set()
    chan._handle_eof(None)


def test_the_last_bytes_and_the_end_arriving_while_the_reader_looks_elsewhere_are_read() -> None:
    def last_words(chan: paramiko.Channel) -> None:
        chan._feed(b"last words")
        _end(chan)

    chan = _Between(last_words)
    sink = OutputLimit("gpu1")
    assert _transport()._drain(chan, sink, OutputLimit("gpu1"), None, time.monotonic() + 5, "late") == 0
    assert sink.text() == "last words"


def test_bytes_arriving_while_the_reader_looks_elsewhere_are_read_without_waiting_for_more() -> None:
    """Read at once, not when the next bytes or the end come (here: never before they are)."""
    seen = threading.Event()
    stalled: list[bool] = []

    class Sink(OutputLimit):
        def write(self, data: bytes) -> int:
            seen.set()
            return super().write(data)

    def host_then_waits(chan: paramiko.Channel) -> None:
        chan._feed(b"news")

        def end_once_read() -> None:
            stalled.append(not seen.wait(5))
            _end(chan)

        threading.Thread(target=end_once_read).start()

    chan = _Between(host_then_waits)
    sink = Sink("gpu1")
    _transport()._drain(chan, sink, OutputLimit("gpu1"), None, time.monotonic() + 30, "late")
    assert sink.text() == "news"
    assert stalled == [False]

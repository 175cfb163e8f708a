"""How forge sets up paramiko's transport for a connection (forge/transport/ssh.py)."""

from __future__ import annotations

import socket

import paramiko

from forge.transport import ssh


def test_the_thread_checks_once_a_second_during_the_handshake_and_once_a_minute_after_and_gcm_comes_first() -> None:
    """paramiko's thread wakes at its socket's timeout to see whether it should stop: forge's
    once a second while the handshake's timers run (paramiko's own: ten times), then once a
    minute (closing wakes it). The first through a paramiko class attribute that this test
    would catch paramiko no longer reading."""
    a, b = socket.socketpair()
    try:
        t = ssh._transport(a)
        assert a.gettimeout() == 1.0
        assert t.get_security_options().ciphers[:2] == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
        assert isinstance(t, ssh._Transport)
        t.idle()
        assert a.gettimeout() == 60.0
    finally:
        a.close()
        b.close()


def _message(kind: int, remote: int, data: bytes | None = None) -> paramiko.Message:
    m = paramiko.Message()
    m.add_byte(bytes([kind]))
    m.add_int(remote)
    if data is not None:
        m.add_string(data)
    return m


def _sent(b: socket.socket) -> bytes:
    b.setblocking(False)
    try:
        return b.recv(1 << 16)
    except BlockingIOError:
        return b""


DATA, EOF, CLOSE = 94, 96, 97


def test_nothing_leaves_for_a_channel_once_it_is_closed() -> None:
    """paramiko's senders check a channel, let go of its lock and send, while its thread may
    close the channel meanwhile; sshd hangs up on a message for a channel it has freed. The
    check runs where paramiko orders a connection's messages, on paramiko's own mark of a
    closed channel (set before its close goes out)."""
    a, b = socket.socketpair()
    try:
        t = ssh._transport(a)
        send = t._send_message  # type: ignore[attr-defined]
        live, ending = paramiko.Channel(0), paramiko.Channel(1)
        for chan, remote in ((live, 7), (ending, 8)):  # confirmed by the server
            chan.remote_chanid, chan.active = remote, True
        t._channels.put(0, live)  # type: ignore[attr-defined]
        t._channels.put(1, ending)  # type: ignore[attr-defined]
        send(_message(EOF, 8))  # its input ended: goes out
        assert _sent(b) != b""
        with ending.lock:
            ending._set_closed()  # as paramiko's close does, then it sends the close
        send(_message(CLOSE, 8))
        assert _sent(b) != b""
        send(_message(DATA, 8, b"late request"))
        send(_message(EOF, 8))
        send(_message(DATA, 9, b"no such channel"))
        assert _sent(b) == b""
        send(_message(DATA, 7, b"request"))
        assert b"request" in _sent(b)
    finally:
        a.close()
        b.close()


def test_a_channel_still_opening_is_not_taken_for_a_closed_one_with_the_number_it_will_get() -> None:
    """paramiko numbers a channel the server has not confirmed yet 0; sshd then gives it the
    number of a channel just closed, often 0. Taken for that one when its close went out, the
    new channel's every message was held back (a stream behind the bastion stalled, 1 run in
    8 of the transport lab tests); taken for a live channel 0 before its confirmation, it
    would let a late message of the closed one through."""
    a, b = socket.socketpair()
    try:
        t = ssh._transport(a)
        send = t._send_message  # type: ignore[attr-defined]
        opening = paramiko.Channel(1)  # remote_chanid 0 until the server's confirmation
        t._channels.put(1, opening)  # type: ignore[attr-defined]
        send(_message(CLOSE, 0))  # the close of the channel before, already unlinked
        assert _sent(b) != b""
        send(_message(DATA, 0, b"late"))  # a late message of that one is not the new one's
        assert _sent(b) == b""
        opening.remote_chanid, opening.active = 0, True  # confirmed: the server reused the number
        send(_message(DATA, 0, b"the new channel's input"))
        assert b"the new channel's input" in _sent(b)
    finally:
        a.close()
        b.close()


def test_an_ended_connection_opens_no_new_one_and_ends_a_stream_started_as_it_ended() -> None:
    """After the run's end (``end()``), a thread still working for the host gets an error
    instead of a new connection (nothing is left open behind the run's back), and an ``ssh``
    stream that was being started meanwhile is ended at once."""
    import subprocess

    import pytest

    from forge.errors import ConnectError
    from forge.inventory import Host

    t = ssh.SSHTransport(Host(name="gpu1", address="192.0.2.1"))  # never reached: no connection opens
    t.end()
    with pytest.raises(ConnectError, match="the run is ending"):
        t.run(["true"])
    with pytest.raises(ConnectError, match="the run is ending"):
        t.run_again(["true"])
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        t._track(None, proc)
        assert proc.wait(10) != 0
    finally:
        proc.kill()
        proc.wait()

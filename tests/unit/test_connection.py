"""How forge sets up paramiko's transport for a connection (forge/transport/ssh.py)."""

from __future__ import annotations

import socket

from forge.transport import ssh


def test_an_idle_connections_thread_checks_once_a_second_and_gcm_comes_first() -> None:
    """paramiko's thread wakes at its socket's timeout to see whether it should stop: forge's
    once a second (paramiko's own: ten times), set through a paramiko class attribute that this
    test would catch paramiko no longer reading."""
    a, b = socket.socketpair()
    try:
        t = ssh._transport(a)
        assert a.gettimeout() == 1.0
        assert t.get_security_options().ciphers[:2] == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
    finally:
        a.close()
        b.close()

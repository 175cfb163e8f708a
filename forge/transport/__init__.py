"""Running commands on hosts: locally or over SSH, one interface."""

from __future__ import annotations

from forge.inventory import Host
from forge.transport.base import Command, CommandResult, Transport
from forge.transport.deferred import defer_invoke

defer_invoke()  # before anything here imports paramiko


def connect(host: Host) -> Transport:
    """A transport for ``host``: local for the local host, SSH for every other one.

    Nothing is opened until the first command.
    """
    if host.local:
        from forge.transport.local import LocalTransport

        return LocalTransport(host.name, command_timeout=host.command_timeout)
    from forge.transport.ssh import SSHTransport

    return SSHTransport(host)


__all__ = ["Command", "CommandResult", "Transport", "connect"]

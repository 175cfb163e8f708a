"""One host of the fleet, connected: what every fleet operation is handed.

A :class:`HostSession` carries the host as the inventory describes it, the connection to it
(:mod:`forge.transport`), and how to reach its Docker daemon: it builds every ``docker``
command for that host (``docker -H DOCKER_HOST ...`` when the inventory names a daemon), and
scripts get the same words as their trailing arguments (``"$@" ps -a``). It runs commands like
the transport it wraps, so code that only runs commands takes it as a
:class:`~forge.transport.Transport`.
"""

from __future__ import annotations

import getpass
from typing import IO

from forge.inventory import Host
from forge.transport import Command, CommandResult, Transport


def user_on(host: Host) -> str:
    """Whose processes and environments are the user's own on ``host``: its SSH user, else the
    local user."""
    return host.user or getpass.getuser()


class HostSession(Transport):
    def __init__(self, host: Host, transport: Transport) -> None:
        self.host = host
        self.transport = transport
        self.name = host.name

    @property
    def docker_words(self) -> list[str]:
        """``docker`` and the options that point it at this host's daemon."""
        return ["docker", "-H", self.host.docker_host] if self.host.docker_host else ["docker"]

    def docker(self, *args: str) -> list[str]:
        """The argv of a docker command for this host's daemon."""
        return [*self.docker_words, *args]

    @property
    def me(self) -> str:
        return user_on(self.host)

    # ------------------------------------------------------------------ Transport

    def run(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = False,
    ) -> CommandResult:
        return self.transport.run(command, timeout=timeout, stdin=stdin, check=check)

    def run_again(self, command: Command, *, timeout: float | None = None) -> CommandResult:
        return self.transport.run_again(command, timeout=timeout)

    def stream(
        self,
        command: Command,
        *,
        source: IO[bytes] | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        return self.transport.stream(command, source=source, sink=sink, timeout=timeout)

    def host_key(self) -> tuple[str, str] | None:
        return self.transport.host_key()

    def close(self) -> None:
        self.transport.close()

    def end(self) -> None:
        self.transport.end()

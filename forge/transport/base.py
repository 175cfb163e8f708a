"""The transport interface every host connection implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from forge import shell
from forge.errors import CommandFailed

Command = Sequence[str] | shell.Script


def to_script(command: Command) -> shell.Script:
    """Accept an argv list or a :class:`forge.shell.Script`; refuse a bare string."""
    if isinstance(command, shell.Script):
        return command
    if isinstance(command, str):
        raise TypeError("pass an argv list, or build the command with forge.shell")
    return shell.render(command)


@dataclass(frozen=True)
class CommandResult:
    """What one command did on one host."""

    host: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def check(self) -> CommandResult:
        """Return self, or raise :class:`CommandFailed` when the command failed."""
        if not self.ok:
            raise CommandFailed(self.host, self.command, self.exit_status, self.stderr)
        return self


class Transport(abc.ABC):
    """A connection to one host. Open lazily, kept open across commands, closed by close()."""

    name: str

    @abc.abstractmethod
    def run(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run a command to completion and return its result (text decoded as UTF-8)."""

    @abc.abstractmethod
    def stream(
        self,
        command: Command,
        *,
        source: IO[bytes] | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a command with binary stdin from ``source`` and/or stdout to ``sink``.

        Returned stdout is empty when ``sink`` is given; stderr is always captured.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; a later command opens a new one."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

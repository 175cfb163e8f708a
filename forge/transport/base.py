"""The transport interface every host connection implements."""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Literal

from forge import shell
from forge.errors import CommandFailed, HostError

Command = Sequence[str] | shell.Script

#: The most output :meth:`Transport.run` keeps of one command. Commands forge runs print
#: kilobytes (a host with thousands of containers: a few MB); anything far beyond is a host
#: misbehaving, and must not take the client's memory with it.
MAX_OUTPUT = 64 << 20
#: The tail of stderr kept for messages.
MAX_STDERR = 256 << 10
#: Seconds a remote command may outlive the client's timeout before the host ends it.
REMOTE_GRACE_S = 2

# Runs $2 under `timeout` where the host has it (coreutils, busybox): the command and what it
# started (its process group) end on the host too, not only the client's wait for it.
_TIMEOUT_WRAPPER = 'if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 "$1" sh -c "$2"; fi; exec sh -c "$2"'


@functools.lru_cache(maxsize=256)  # a probe's, every round
def with_timeout(script: shell.Script, timeout: float | None) -> shell.Script:
    """``script`` made to end on the host itself a little after ``timeout`` seconds."""
    if not timeout:
        return script
    return shell.script(_TIMEOUT_WRAPPER, str(math.ceil(timeout) + REMOTE_GRACE_S), script)


class OutputTooLarge(HostError):
    """A command printed more than forge keeps (:data:`MAX_OUTPUT`)."""


class OutputLimit:
    """A byte sink with a bound: ``head`` fails past the limit, ``tail`` keeps the last bytes."""

    def __init__(self, host: str, *, keep: Literal["head", "tail"] = "head", limit: int | None = None) -> None:
        self.host = host
        self.keep = keep
        self.limit = limit if limit is not None else (MAX_OUTPUT if keep == "head" else MAX_STDERR)
        self._chunks: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self.limit:
            if self.keep == "head":
                raise OutputTooLarge(
                    self.host, f"a command printed more than {self.limit >> 20} MiB; forge stopped reading it"
                )
            joined = b"".join(self._chunks)[-self.limit :]
            self._chunks, self._size = [joined], len(joined)
        return len(data)

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")


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

    def run_again(self, command: Command, *, timeout: float | None = None) -> CommandResult:
        """Run a command that is run over and over on this connection (a probe, each round of
        ``--watch``): the same result as :meth:`run`, but a transport may serve it from a
        loop it keeps on the host (:mod:`forge.transport.kept`)."""
        return self.run(command, timeout=timeout)

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; a later command opens a new one."""

    def end(self) -> None:
        """Close the connection for good, at the end of a run: a later command fails with
        :class:`~forge.errors.ConnectError` instead of opening a new one (a thread still
        working for a host that was interrupted must not reconnect behind the run's back).
        Here: just :meth:`close`, for a transport with no connection to open (this machine)."""
        self.close()

    def host_key(self) -> tuple[str, str] | None:
        """The host's key as this connection verified it (type, base64), connecting if need
        be; None where there is no SSH server to verify (this machine)."""
        return None

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

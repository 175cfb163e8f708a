"""One exception root for forge, and the exit codes the CLI maps them to.

The library raises these; only :mod:`forge.cli` turns them into a message and an exit code.
Every message is a sentence a person can act on.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented exit codes of the ``forge`` command (see docs/cli.md)."""

    OK = 0
    ERROR = 1  # an operation failed (details on stderr)
    USAGE = 2  # bad command line (click's own code)
    INVENTORY = 3  # hosts.toml is missing, unreadable or invalid
    PARTIAL = 4  # some hosts failed or did not answer; the others were served
    UNREACHABLE = 5  # no host could be reached at all
    LOCKED = 6  # another forge run holds the lock
    TIMED_OUT = 7  # a wait (--wait-timeout) ended before the request fit
    INTERRUPTED = 130  # Ctrl-C


class ForgeError(Exception):
    """Root of every error forge raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InventoryError(ForgeError):
    """The inventory file is invalid. Names the file, the host and the key."""

    exit_code = ExitCode.INVENTORY

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        host: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.host = host
        self.key = key
        where = []
        if path:
            where.append(path)
        if host:
            where.append(f"host {host!r}")
        if key:
            where.append(f"key {key!r}")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint=hint)


class ConfigError(ForgeError):
    """The SSH client config (``ssh_config`` in hosts.toml, or ~/.ssh/config) cannot be used."""

    exit_code = ExitCode.INVENTORY


class TargetError(ForgeError):
    """A host, group or tag named on the command line matches nothing in the inventory."""

    exit_code = ExitCode.USAGE


def shown(command: str) -> str:
    """A command for a message: on one line, at most 80 characters (forge's own scripts are
    long: their start says which one it was)."""
    text = " ".join(command.split())
    return text if len(text) <= 80 else text[:77] + "..."


def why(e: BaseException) -> str:
    """What went wrong, in words, without the host's name (the caller shows that), with the
    hint when there is one."""
    if isinstance(e, HostError):
        return e.reason if not e.hint else f"{e.reason} ({e.hint})"
    return str(e) or type(e).__name__


class HostError(ForgeError):
    """Something went wrong on one host. Carries the host's name."""

    def __init__(self, host: str, message: str, *, hint: str | None = None) -> None:
        self.host = host
        super().__init__(f"{host}: {message}", hint=hint)
        self.reason = message


class ConnectError(HostError):
    """The host could not be reached or authenticated."""


class HostKeyError(ConnectError):
    """The host's key is unknown (and not opted into accept-new) or has changed."""


class CommandTimeout(HostError):
    """A remote command ran past its timeout."""


class CommandFailed(HostError):
    """A remote command exited non-zero. Shows the command, the code and stderr's tail."""

    def __init__(self, host: str, command: str, exit_status: int, stderr: str, *, hint: str | None = None) -> None:
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-3:])
        msg = f"`{shown(command)}` exited with status {exit_status}"
        if tail:
            msg += f": {tail}"
        super().__init__(host, msg, hint=hint)


class LockHeld(ForgeError):
    """Another forge run holds the lock."""

    exit_code = ExitCode.LOCKED

"""Errors of the lab: every one names what failed and what to do about it."""

from __future__ import annotations

from forge.errors import ForgeError


class LabError(ForgeError):
    """The lab could not be brought up, inspected or taken down."""


class LabCommandFailed(LabError):
    """A local command the lab ran exited non-zero. Shows the command and stderr's tail."""

    def __init__(self, command: str, exit_status: int, stderr: str, *, hint: str | None = None):
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        msg = f"`{command}` exited with status {exit_status}"
        if tail:
            msg += f": {tail}"
        super().__init__(msg, hint=hint)

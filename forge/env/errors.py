"""What can go wrong with an environment, with the step that failed."""

from __future__ import annotations

from forge.errors import ForgeError, HostError


class EnvError(ForgeError):
    """An environment operation failed (not found, ambiguous, no room for it)."""


class VolumeError(HostError):
    """The data volume could not be created, mounted or read on a host."""


class ClaimConflict(HostError):
    """Another run claimed one of the GPUs first."""

    def __init__(self, host: str, gpu: str) -> None:
        self.gpu = gpu
        super().__init__(host, f"GPU {gpu} was claimed by another run first")


class LaunchError(HostError):
    """The container did not start, or its sshd did not answer."""


class MigrateFailed(ForgeError):
    """A step of a migration failed; the old environment (if any) was left running."""

    def __init__(self, step: str, cause: ForgeError, *, old: str | None, cleaned: tuple[str, ...]) -> None:
        self.step = step
        self.cause = cause
        self.old = old
        self.cleaned = cleaned
        kept = f"; the old environment still runs on {old}" if old else ""
        removed = f"; removed {', '.join(cleaned)}" if cleaned else ""
        super().__init__(f"migrate failed at step '{step}': {cause}{kept}{removed}")
        self.exit_code = cause.exit_code

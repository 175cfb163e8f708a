"""Progress reporting, one interface for all of forge: the library reports steps in words
(:meth:`Progress.note`) and per-key work (a host, a transfer: start, bytes, finish); what shows
them is the caller's (the CLI draws bars and counters on a terminal only).

:class:`NoProgress` is the do-nothing version every library call defaults to. Implementations
must be thread-safe: hosts report from their own threads.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def note(self, message: str) -> None:
        """A step of the work, in words (e.g. "claiming GPUs on gpu2")."""

    def start(self, key: str, total_bytes: int | None) -> None:
        """Work on ``key`` (e.g. a host) begins; ``total_bytes`` is an estimate, or None."""

    def advance(self, key: str, nbytes: int) -> None:
        """``nbytes`` more of ``key`` are done."""

    def finish(self, key: str, ok: bool, note: str = "") -> None:
        """Work on ``key`` ended."""


class NoProgress:
    def note(self, message: str) -> None:
        pass

    def start(self, key: str, total_bytes: int | None) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def finish(self, key: str, ok: bool, note: str = "") -> None:
        pass

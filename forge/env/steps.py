"""Steps that undo what they did when a later one fails: the runner of ``forge migrate``.

Each step is named (the name goes into the error) and registers, right after doing something,
how to undo it. When a step fails, everything registered is undone in reverse order, and the
error says which step failed and what was removed. A *scope* undoes only what was done inside
it (one candidate host); :meth:`Steps.keep` makes what was done final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from forge.errors import ForgeError


class Steps:
    def __init__(self) -> None:
        self.current = "start"
        self._undo: list[tuple[str, Callable[[], object]]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run the block as step ``name`` (the step an error is reported at)."""
        self.current = name
        yield

    def undo(self, what: str, fn: Callable[[], object]) -> None:
        """``fn`` undoes ``what``: run in reverse order if a later step fails."""
        self._undo.append((what, fn))

    def mark(self) -> int:
        return len(self._undo)

    def rollback(self, to: int = 0) -> tuple[str, ...]:
        """Undo what was registered since ``to`` (everything by default), newest first; returns
        what was undone. An undo that fails itself is skipped: the others still run."""
        done = []
        while len(self._undo) > to:
            what, fn = self._undo.pop()
            try:
                fn()
                done.append(what)
            except ForgeError:
                pass
        return tuple(done)

    def keep(self) -> None:
        """What was done is final: nothing is undone any more."""
        self._undo.clear()

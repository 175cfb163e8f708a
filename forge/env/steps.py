"""Steps that undo what they did when a later one fails: the runner of ``forge migrate``.

Each step is named (the name goes into the error) and registers, right after doing something,
how to undo it. When a step fails, everything registered is undone in reverse order, and the
error says which step failed and what was removed. A *scope* undoes only what was done inside
it (one candidate host); :meth:`Steps.keep` makes what was done final.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when the block ends: as KeyboardInterrupt (or
    whatever the handler before does), raised even over an error of the block. For a remote
    command that creates what an undo removes (``docker run -d``, a claim's ``docker create``):
    the host goes on with it after forge stops waiting, so an undo run at once could look
    before the thing exists, find nothing, and leave it (a container that starts by itself
    with ``--restart=always``, a claim holding a GPU). Held, the command ends (within its
    timeout) and the code after it records what it made before the interrupt goes on. The
    handler only notes the signal: waits go on (Python retries them), no lock is taken.
    Only the main thread gets Ctrl-C; elsewhere the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if old is None else old)  # None: not set from Python
        if seen:
            _deliver(old)


def _deliver(handler: Any) -> None:
    """What a Ctrl-C held back does now: the handler that was in place decides."""
    if handler == signal.SIG_IGN:
        return
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, None)
        return
    raise KeyboardInterrupt

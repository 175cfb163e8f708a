"""Steps that undo what they did when a later one fails: the runner of ``forge migrate``.

Each step is named (the name goes into the error) and registers, right after doing something,
how to undo it. When a step fails, everything registered is undone in reverse order, and the
error says which step failed and what was removed. A *scope* undoes only what was done inside
it (one candidate host); :meth:`Steps.keep` makes what was done final.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from forge.errors import ForgeError

T = TypeVar("T")


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


def to_the_end(fn: Callable[[], T]) -> T:
    """``fn()``, run to its end even when Ctrl-C comes meanwhile; the KeyboardInterrupt is
    raised after it. For a remote command that creates what an undo removes (``docker run
    -d``): the host goes on running it after forge stops waiting, so an undo run at once could
    look before the container exists, find nothing, and leave it to start (``--restart=always``,
    on GPUs whose claims were just released). ``fn`` runs in a thread of its own, bounded by
    its command's timeout; this thread waits on a pipe, not on a lock: a KeyboardInterrupt
    landing inside ``Thread.join`` can leave the thread marked stopped while it runs."""
    result: list[T] = []
    error: list[BaseException] = []
    read, write = os.pipe()

    def work() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller below
            error.append(e)
        finally:  # each end is closed by its own side: no write to a number reused meanwhile
            with contextlib.suppress(OSError):  # the caller stopped waiting (interrupted before it began)
                os.write(write, b"x")
            os.close(write)

    interrupted = False
    try:
        threading.Thread(target=work, name="forge-to-the-end", daemon=True).start()
        while True:
            try:
                if select.select([read], [], [])[0]:
                    break
            except KeyboardInterrupt:
                interrupted = True
    finally:
        os.close(read)
    if interrupted:
        raise KeyboardInterrupt
    if error:
        raise error[0]
    return result[0]

"""A flag a signal handler may set: no lock taken.

A Python signal handler runs in the main thread between two bytecodes of whatever that thread
was doing. When that code holds a lock (``threading.Event`` takes its own inside ``wait``, a
thread pool inside ``submit``) and the handler takes the same lock (``Event.set``), the process
hangs for good: `forge gpus --watch` went silent after a resize that way, about once in a few
CI runs. A handler here only stores an attribute and writes a byte to a pipe (the self-pipe
trick); a waiter selects on the pipe, so it wakes at once without polling.
"""

from __future__ import annotations

import os
import select
from collections.abc import Sequence


class SignalFlag:
    """``threading.Event``'s ``set``/``is_set``/``wait``/``clear`` that ``set`` may be called
    from a signal handler (and from any thread)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._set = False

    def fileno(self) -> int:
        """Readable once the flag is set (or :meth:`wake` was called): for ``select``."""
        return self._read

    def set(self) -> None:
        self._set = True
        self.wake()

    def wake(self) -> None:
        """Wake whoever waits, without setting the flag (a waiter that should look again)."""
        try:
            os.write(self._write, b"\0")
        except OSError:  # the pipe is full (a waiter wakes anyway) or closed (none waits)
            pass

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False  # before draining: a set() in between leaves the flag set
        try:
            while os.read(self._read, 4096):
                pass
        except OSError:  # drained
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set, woken, or ``timeout`` seconds passed; whether the flag is set."""
        if not self._set:
            select.select([self._read], [], [], timeout)
        return self._set

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def wait_any(flags: Sequence[SignalFlag], timeout: float | None) -> None:
    """Wait until one of ``flags`` is set (or woken), or ``timeout`` seconds passed."""
    if not any(f.is_set() for f in flags):
        select.select(list(flags), [], [], timeout)

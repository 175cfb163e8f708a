"""A lock file on this machine, so that two forge runs (e.g. overlapping cron jobs) don't collide.

``flock(2)`` on a file: the kernel releases it when the holder exits, even when killed, so a
stale lock cannot outlive its process. The holder's PID and start time are written into the
file for the message the second run shows.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from forge.errors import ForgeError, LockHeld


def lock_dir() -> Path:
    """``$FORGE_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/forge``, else ``~/.cache/forge``."""
    explicit = os.environ.get("FORGE_LOCK_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "forge"
    return Path.home() / ".cache" / "forge"


class FileLock:
    """An exclusive lock named ``name``; use as a context manager after :meth:`acquire`."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.path = (directory or lock_dir()) / f"{name}.lock"
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.2) -> FileLock:
        """Take the lock, waiting up to ``wait_s`` seconds; raise :class:`LockHeld` otherwise."""
        fd = self._open()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    waited = f" after waiting {wait_s:g} s" if wait_s else ""
                    raise LockHeld(
                        f"another forge run holds the lock {self.path}{waited}{holder}",
                        hint=None if wait_s else "it is still running; use --wait SECONDS to wait for it",
                    ) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        self._fd = fd
        return self

    def _open(self) -> int:
        """Open the lock file as a plain file of this user's: never through a symlink (someone
        could point it at a file of ours that the holder's PID would overwrite)."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            why = "it is a symlink" if e.errno == errno.ELOOP else (e.strerror or str(e))
            raise ForgeError(
                f"cannot use the lock file {self.path}: {why}",
                hint="remove it, or set FORGE_LOCK_DIR to a directory only this user can write",
            ) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise ForgeError(
                f"cannot use the lock file {self.path}: it is not a plain file of this user's",
                hint="remove it, or set FORGE_LOCK_DIR to a directory only this user can write",
            )
        return fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    if len(text) >= 2:
        return f" (pid {text[0]}, since {text[1]})"
    return ""

"""What a lab user needs to mount FUSE file systems (sshfs volumes) with ``allow_other``,
as on a stock Debian host: ``user_allow_other`` in /etc/fuse.conf and a usable /dev/fuse.

Each function returns what it changed, so ``down`` can undo exactly that."""

from __future__ import annotations

import os
import stat
from pathlib import Path

FUSE_CONF = Path("/etc/fuse.conf")
FUSE_DEV = Path("/dev/fuse")


def ensure_user_allow_other() -> bool:
    """Let users mount FUSE with ``-o allow_other``. True when added here."""
    text = FUSE_CONF.read_text() if FUSE_CONF.exists() else ""
    if any(line.strip() == "user_allow_other" for line in text.splitlines()):
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    FUSE_CONF.write_text(text + "user_allow_other\n")
    return True


def remove_user_allow_other() -> None:
    if not FUSE_CONF.exists():
        return
    lines = FUSE_CONF.read_text().splitlines(keepends=True)
    FUSE_CONF.write_text("".join(line for line in lines if line.strip() != "user_allow_other"))


def ensure_dev_fuse_open() -> int | None:
    """Make /dev/fuse mode 0666 (udev's default on Debian; some machines have 0600, and
    libfuse then fails for users before trying fusermount3). Returns the old mode when
    changed here, else None."""
    if not FUSE_DEV.exists():
        return None
    mode = stat.S_IMODE(FUSE_DEV.stat().st_mode)
    if mode & 0o666 == 0o666:
        return None
    os.chmod(FUSE_DEV, mode | 0o666)
    return mode


def restore_dev_fuse(mode: int) -> None:
    if FUSE_DEV.exists():
        os.chmod(FUSE_DEV, mode)

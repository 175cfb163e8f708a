"""Local commands and processes of the lab: commands run through forge's own
:class:`~forge.transport.local.LocalTransport` (argv lists quoted by :mod:`forge.shell`, a
timeout that ends the whole process group, bounded output, :class:`~forge.errors.CommandFailed`
on failure); processes found, waited for and ended with psutil (the ``lab`` extra)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO

from forge.errors import CommandFailed
from forge.lab.errors import LabError
from forge.transport.base import CommandResult
from forge.transport.local import LocalTransport

try:
    import psutil
except ImportError:  # the client installed alone: no lab, no psutil
    psutil = None  # type: ignore[assignment]

Progress = Callable[[str], None]

#: The lab's own commands run here, named "lab" in their errors.
_HERE = LocalTransport("lab")


def no_progress(message: str) -> None:
    """The progress callback used when the caller gives none."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: bytes | IO[bytes] | None = None,
    timeout: float | None = 120,
    hint: str | None = None,
) -> CommandResult:
    """Run one command here to completion (``input``: bytes, or a file streamed to its stdin;
    ``timeout`` None: none), its output captured as text."""
    argv = [argv[0] if shutil.which(argv[0]) else which(argv[0]), *argv[1:]]
    if input is None or isinstance(input, bytes):
        result = _HERE.run(argv, stdin=input, timeout=timeout or 0)
    else:
        out = io.BytesIO()
        result = _HERE.stream(argv, source=input, sink=out, timeout=timeout or 0)
        result = CommandResult(**{**vars(result), "stdout": out.getvalue().decode("utf-8", "replace")})
    if check and not result.ok:
        raise CommandFailed(result.host, result.command, result.exit_status, result.stderr, hint=hint)
    return result


def require(*tools: str) -> None:
    """Raise when any of these executables is missing, naming all of them."""
    sbin = "/usr/local/sbin:/usr/sbin:/sbin"
    missing = [t for t in tools if shutil.which(t) is None and shutil.which(t, path=sbin) is None]
    if missing:
        raise LabError(
            "missing tools: " + ", ".join(missing),
            hint="install docker.io openssh-server openssh-client sshfs iproute2 iptables debootstrap util-linux",
        )


def which(tool: str) -> str:
    """The full path of an executable (also looking in the sbin dirs), or raise."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        require(tool)
        raise AssertionError("unreachable")
    return found


def _need_psutil() -> None:
    if psutil is None:
        raise LabError("the lab needs psutil", hint="pip install 'forge-fleet[lab]'")


def _process(pid: int) -> psutil.Process | None:
    _need_psutil()
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie counts as dead)."""
    _need_psutil()
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def pid_alive(pid: int | None) -> bool:
    p = _process(pid) if pid else None
    return p is not None and _running(p)


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def kill_all(pids: Iterable[int], *, grace: float = 5.0) -> None:
    """SIGTERM these processes, wait up to ``grace`` seconds, SIGKILL what is left. A pid
    reused by another process since it was listed is left alone (psutil checks)."""
    _need_psutil()
    procs = [p for p in map(_process, set(pids) - {os.getpid()}) if p is not None]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        if wait_until(lambda: not any(_running(p) for p in procs), grace):
            return
    survivors = sorted(p.pid for p in procs if _running(p))
    if survivors:
        raise LabError(f"processes {survivors} survived SIGKILL")


def with_descendants(pids: Iterable[int]) -> set[int]:
    """These processes and every process below them."""
    _need_psutil()
    found = set(pids)
    for p in [p for p in map(_process, found) if p is not None]:
        with suppress(psutil.NoSuchProcess):
            found.update(c.pid for c in p.children(recursive=True))
    return found


def pids_mentioning(text: str, programs: Iterable[str]) -> set[int]:
    """Processes running one of ``programs`` (basenames) whose command line contains ``text``.

    Used to find the containerd shims of a lab's daemons, which detach from their parents.
    """
    _need_psutil()
    names = set(programs)
    found: set[int] = set()
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if p.pid != os.getpid() and argv and os.path.basename(argv[0]) in names and text in "\0".join(argv):
            found.add(p.pid)
    return found

"""Running local commands for the lab: argv lists only, errors as :class:`LabCommandFailed`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from forge import shell
from forge.lab.errors import LabCommandFailed, LabError

Progress = Callable[[str], None]


def no_progress(message: str) -> None:
    """The progress callback used when the caller gives none."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: bytes | None = None,
    timeout: float | None = 120,
    hint: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command to completion, capturing text output."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except FileNotFoundError as e:
        raise LabError(f"`{argv[0]}` is not installed", hint=hint or "install the lab's Debian packages") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"`{shell.display(argv)}` ran past {timeout} s", hint=hint) from e
    if check and proc.returncode != 0:
        raise LabCommandFailed(shell.display(argv), proc.returncode, proc.stderr, hint=hint)
    return proc


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


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
    """SIGTERM these processes, wait up to ``grace`` seconds, SIGKILL what is left."""
    pids = [p for p in set(pids) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if wait_until(lambda: not any(pid_alive(p) for p in pids), grace):
            return
    if any(pid_alive(p) for p in pids):
        raise LabError(f"processes {sorted(p for p in pids if pid_alive(p))} survived SIGKILL")


def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def with_descendants(pids: Iterable[int]) -> set[int]:
    """These processes and every process below them."""
    parents = _ppid_map()
    found = set(pids)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def pids_mentioning(text: str, programs: Iterable[str]) -> set[int]:
    """Processes running one of ``programs`` (basenames) whose command line contains ``text``.

    Used to find the containerd shims of a lab's daemons, which detach from their parents.
    """
    names = set(programs)
    found: set[int] = set()
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
        if os.path.basename(argv0) in names and needle in cmdline:
            found.add(int(entry.name))
    return found

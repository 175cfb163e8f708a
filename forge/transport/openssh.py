"""Bulk streams through the OpenSSH client: the pipe for image transfers.

Commands go over paramiko channels (an open connection answers in milliseconds), but a
paramiko channel encrypts in Python: measured 150-160 MiB/s per core here, 2.1-2.4 CPU-s per
500 MiB, all in one process under the GIL however many hosts it feeds (docs/benchmarks.md).
The ``ssh`` client does the same work in C, in one process per host. :func:`stream` runs one
command through it with forge's own rules, so nothing about trust changes:

- host keys: ``StrictHostKeyChecking=yes`` against exactly the known_hosts files forge's
  paramiko connection uses (``UserKnownHostsFile``; no global file), so a key forge would
  refuse, ``ssh`` refuses too. forge opens its paramiko connection first, so an
  ``accept-new`` host's key is already recorded by forge's own policy;
- keys or agent only: ``BatchMode=yes``, password and keyboard-interactive off; the
  inventory's ``identity_file`` with ``IdentitiesOnly=yes``;
- the remote command is the one string :mod:`forge.shell` rendered, after ``--``;
- ``~/.ssh/config`` (aliases, HostName, ProxyJump) is read by ``ssh`` itself, as Fabric reads it
  for the paramiko connection; the inventory's user and port win, as they do there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from forge.errors import CommandTimeout, ConnectError, ForgeError, HostKeyError
from forge.inventory import Host
from forge.transport.base import CommandResult

_CHUNK = 1 << 20
#: FORGE_SSH_STREAM=paramiko keeps bulk streams on paramiko channels.
ENV = "FORGE_SSH_STREAM"
# What OpenSSH itself prints when the connection (not the remote command) failed.
_SSH_ERROR = re.compile(
    r"^(ssh: |ssh_dispatch_run_fatal|ssh_exchange_identification|kex_exchange_identification|"
    r"client_loop: |Connection (to .* closed|closed by|reset by|timed out)|"
    r"Host key verification failed|Permission denied \(|packet_write_wait|Timeout, server|"
    r"Broken pipe|@@@@@)",
    re.MULTILINE,
)


_ENDED: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()  # ended by forge, not by the network


def client() -> str | None:
    """The ``ssh`` program to stream through, or None to use paramiko."""
    if os.environ.get(ENV, "").strip().lower() == "paramiko":
        return None
    return shutil.which("ssh")


def argv(host: Host, known_hosts: Sequence[Path], script: str, *, ssh: str = "ssh") -> list[str]:
    """The ``ssh`` command line that runs ``script`` on ``host`` under forge's rules."""
    if not usable(known_hosts):
        raise ValueError("known_hosts paths must be given and hold no whitespace")
    out = [
        ssh,
        "-T",
        "-e",
        "none",
        "-o",
        "BatchMode=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UserKnownHostsFile=" + " ".join(str(f) for f in known_hosts),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "Compression=no",
        "-o",
        f"ConnectTimeout={max(1, round(host.connect_timeout))}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]
    if host.identity_file:
        out += ["-i", os.path.expanduser(host.identity_file), "-o", "IdentitiesOnly=yes"]
    if host.user:
        out += ["-l", host.user]
    if host.port:
        out += ["-p", str(host.port)]
    return [*out, "--", host.ssh_target, script]


def usable(known_hosts: Sequence[Path]) -> bool:
    """Whether :func:`argv` can express these known_hosts files (no whitespace in paths)."""
    return bool(known_hosts) and not any(re.search(r"\s", str(f)) for f in known_hosts)


def stream(
    host: Host,
    command_argv: list[str],
    script: str,
    *,
    source: IO[bytes] | None,
    sink: IO[bytes] | None,
    timeout: float | None,
    track: Callable[[subprocess.Popen[bytes] | None, subprocess.Popen[bytes]], None] | None = None,
) -> CommandResult:
    """Run ``command_argv`` (an ``ssh`` command line for ``script``), ``source`` to its stdin,
    its stdout to ``sink``. ``track(None, proc)`` / ``track(proc, proc)`` register and drop the
    process so that closing the transport can end it."""
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    try:
        proc = subprocess.Popen(
            command_argv,
            stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C reaches forge, which ends the stream itself
        )
    except OSError as e:
        raise ConnectError(host.name, f"cannot run {command_argv[0]}: {e.strerror}") from e
    if track:
        track(None, proc)
    errors: list[BaseException] = []
    err_chunks: list[bytes] = []
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, sink, errors), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, _Collect(err_chunks), errors), daemon=True),
    ]
    if source is not None:
        threads.append(threading.Thread(target=_feed, args=(source, proc, errors), daemon=True))
    for t in threads:
        t.start()
    try:
        try:
            status = proc.wait(None if deadline is None else max(0.001, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _end(proc)
            raise CommandTimeout(host.name, f"`{script}` ran past its timeout of {timeout:g} s") from None
        except BaseException:
            _end(proc)
            raise
        for t in threads[:2]:  # the output readers end with the process's pipes
            t.join(30)
    finally:
        if track:
            track(proc, proc)
    stderr = b"".join(err_chunks).decode("utf-8", "replace")
    if status < 0 or proc in _ENDED:
        raise ConnectError(host.name, f"the SSH connection was closed while running a command ({_tail(stderr)})")
    if status == 255 and _SSH_ERROR.search(stderr):
        if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            raise HostKeyError(host.name, f"ssh refused the host key: {_tail(stderr)}")
        raise ConnectError(host.name, f"the SSH connection broke while running a command: {_tail(stderr)}")
    feed_errors = [e for e in errors if not isinstance(e, BrokenPipeError)]
    if feed_errors and status == 0:
        err = feed_errors[0]
        if isinstance(err, ForgeError):
            raise err
        raise ConnectError(host.name, f"sending data failed: {err}") from err
    return CommandResult(
        host=host.name,
        command=script,
        exit_status=status,
        stdout="",
        stderr=stderr,
        duration_s=time.monotonic() - started,
    )


class _Collect:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def write(self, data: bytes) -> int:
        self.chunks.append(data)
        return len(data)


def _pump(pipe: IO[bytes] | None, sink: object, errors: list[BaseException]) -> None:
    assert pipe is not None
    try:
        while data := pipe.read1(_CHUNK):  # type: ignore[attr-defined]
            if sink is not None:
                sink.write(data)  # type: ignore[attr-defined]
    except BaseException as e:  # reported by the caller
        errors.append(e)
    finally:
        pipe.close()


def _feed(source: IO[bytes], proc: subprocess.Popen[bytes], errors: list[BaseException]) -> None:
    stdin = proc.stdin
    assert stdin is not None
    try:
        while data := source.read(_CHUNK):
            stdin.write(data)
    except BaseException as e:  # reported by the caller (a broken pipe: ssh ended first)
        errors.append(e)
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def end(proc: subprocess.Popen[bytes]) -> None:
    """End a stream's ``ssh`` (the transport is being closed)."""
    _ENDED.add(proc)
    _end(proc)


def _tail(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "; ".join(lines[-2:]) or "no message"

"""Bulk streams through the OpenSSH client: the pipe for image transfers.

Commands go over paramiko channels (an open connection answers in milliseconds), but a
paramiko channel encrypts in Python: measured 150-160 MiB/s per core here, 2.1-2.4 CPU-s per
500 MiB, all in one process under the GIL however many hosts it feeds (docs/benchmarks.md).
The ``ssh`` client does the same work in C, in one process per host. :func:`stream` runs one
command through it with forge's own rules, so nothing about trust changes:

- the route: ``-F none`` and every hop spelled out from the :class:`~forge.transport.route.Route`
  forge resolved (host name, port, user, identity files, HostKeyAlias), jump hosts as a nested
  ``ProxyCommand`` of ``ssh -W`` with the same options, so ``ssh`` goes exactly where the
  paramiko connection went;
- host keys: ``StrictHostKeyChecking=yes`` on every hop against exactly the known_hosts files
  forge checks that hop with, so a key forge would refuse, ``ssh`` refuses too. forge opens its
  paramiko connection first, so an ``accept-new`` hop's key is already recorded by forge;
- keys or agent only: ``BatchMode=yes``, password and keyboard-interactive off, identity files
  with ``IdentitiesOnly=yes``; no agent or X11 forwarding;
- the remote command is the one string :mod:`forge.shell` rendered, after ``--``.
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
from typing import IO

from forge import shell
from forge.errors import CommandTimeout, ConnectError, ForgeError, HostKeyError, shown
from forge.inventory import Host
from forge.transport.base import CommandResult, OutputLimit
from forge.transport.route import Hop, Route

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


def argv(route: Route, script: str, *, ssh: str = "ssh") -> list[str]:
    """The ``ssh`` command line that runs ``script`` at the end of ``route`` under forge's rules."""
    if not usable(route):
        raise ValueError("a known_hosts path holds a character ssh_config cannot quote")
    options = hop_options(route.hops, ssh, extra=_STREAM)
    return [ssh, "-T", "-e", "none", *options, "--", route.target.hostname, script]


def hop_options(hops: Sequence[Hop], ssh: str, *, extra: Sequence[str] = (), batch: bool = True) -> list[str]:
    """Options for the last of ``hops``; the hops before it become its ProxyCommand, an
    ``ssh -W`` under the same rules (``ssh -J`` would hand the jump none of these options).
    ``batch``: no prompt at all (not even a key's passphrase): for runs without a person."""
    hop = hops[-1]
    files = " ".join(_quoted(str(f)) for f in hop.known_hosts) or "none"
    out = ["-F", "none"]
    for option in (*(_BATCH if batch else ()), *_RULES, *extra, f"UserKnownHostsFile={files}"):
        out += ["-o", option]
    if hop.key_alias:
        out += ["-o", "HostKeyAlias=" + _quoted(hop.key_alias)]
    for identity in hop.identity_files:
        out += ["-i", identity]
    if hop.identity_files:
        out += ["-o", "IdentitiesOnly=yes"]
    out += ["-l", hop.user, "-p", str(hop.port)]
    proxy = proxy_command(hops, ssh, batch=batch)
    if proxy is not None:
        out += ["-o", "ProxyCommand=" + proxy]
    return out


def proxy_command(hops: Sequence[Hop], ssh: str, *, batch: bool = True) -> str | None:
    """How ``ssh`` reaches the last of ``hops``: through the ones before it (``ssh -W``, %-escaped
    for ssh's token expansion), or the user's own ProxyCommand; None: directly."""
    hop = hops[-1]
    if len(hops) > 1:
        jump = [ssh, *hop_options(hops[:-1], ssh, batch=batch), "-W", f"[{hop.hostname}]:{hop.port}", "--"]
        return shell.render([*jump, hops[-2].hostname]).replace("%", "%%")
    return hop.proxy_command  # the user's own, from their ssh_config: run as ssh would run it


_BATCH = ("BatchMode=yes",)
# On every hop: keys or the agent only, forge's host key files and nothing else, and nothing of
# the client handed to the server.
_RULES = (
    "PasswordAuthentication=no",
    "KbdInteractiveAuthentication=no",
    "StrictHostKeyChecking=yes",
    "GlobalKnownHostsFile=none",
    "UpdateHostKeys=no",
    "CheckHostIP=no",
    "ForwardAgent=no",
)
_STREAM = ("ForwardX11=no", "Compression=no", "ServerAliveInterval=15", "ServerAliveCountMax=4")


def _quoted(value: str) -> str:
    """A path as one ssh_config word (double quotes, %-tokens escaped)."""
    return '"' + value.replace("%", "%%") + '"'


def usable(route: Route) -> bool:
    """Whether :func:`argv` can spell this route's known_hosts paths and alias."""
    words = [str(f) for hop in route.hops for f in hop.known_hosts] + [h.key_alias or "" for h in route.hops]
    return all(not re.search(r'["\\\n\r]', w) for w in words)


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
    proc = _start(host, command_argv, source)
    if track:
        track(None, proc)
    errors: list[BaseException] = []
    stderr = OutputLimit(host.name, keep="tail")
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, sink, errors), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, stderr, errors), daemon=True),
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
            raise CommandTimeout(host.name, f"`{shown(script)}` ran past its timeout of {timeout:g} s") from None
        except BaseException:
            _end(proc)
            raise
        for t in threads[:2]:  # the output readers end with the process's pipes
            t.join(30)
    finally:
        if track:
            track(proc, proc)
    _check_outcome(host, proc, status, stderr.text(), errors)
    return CommandResult(host.name, script, status, "", stderr.text(), time.monotonic() - started)


def _start(host: Host, argv: list[str], source: IO[bytes] | None) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C reaches forge, which ends the stream itself
        )
    except OSError as e:
        raise ConnectError(host.name, f"cannot run {argv[0]}: {e.strerror}") from e


def _check_outcome(
    host: Host, proc: subprocess.Popen[bytes], status: int, stderr: str, errors: list[BaseException]
) -> None:
    """Raise when ``ssh`` itself failed (not the remote command), or the input could not go."""
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

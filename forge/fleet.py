"""Fleet operations: one function run on many hosts in parallel, one result per host.

An unreachable or failing host is a result with its reason, never an exception that hides
the other hosts. Connections are opened once per host and kept for every command of a run;
each operation is handed the host's :class:`~forge.session.HostSession`.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from forge.errors import ConnectError, ExitCode, ForgeError, HostError
from forge.inventory import Host
from forge.progress import Progress
from forge.session import HostSession
from forge.transport import Transport, connect

T = TypeVar("T")

DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True)
class HostResult(Generic[T]):
    """What one host gave: a value, or the error that stopped it."""

    host: Host
    value: T | None = None
    error: ForgeError | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def reason(self) -> str:
        """The error in words, without the host's name (the caller shows that)."""
        if self.error is None:
            return ""
        if isinstance(self.error, HostError):
            return self.error.reason
        return str(self.error)


@dataclass(frozen=True)
class FleetResult(Generic[T]):
    """Per-host results, in inventory order."""

    results: tuple[HostResult[T], ...]

    def __iter__(self) -> Iterator[HostResult[T]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, name: str) -> HostResult[T]:
        for r in self.results:
            if r.host.name == name:
                return r
        raise KeyError(name)

    @property
    def succeeded(self) -> list[HostResult[T]]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[HostResult[T]]:
        return [r for r in self.results if not r.ok]

    def exit_code(self, served: Callable[[HostResult[T]], bool] | None = None) -> ExitCode:
        """The fleet exit code: 0 every host served, 4 some not (the others were), 5 none
        answered. ``served``: whether a host that answered was served (default: it was)."""
        return exit_code([(r.ok, r.ok and (served is None or served(r))) for r in self.results])


def exit_code(hosts: Sequence[tuple[bool, bool]]) -> ExitCode:
    """From (answered, served) per host: the one rule every fleet command's exit status follows."""
    if hosts and not any(answered for answered, _ in hosts):
        return ExitCode.UNREACHABLE
    return ExitCode.OK if all(served for _, served in hosts) else ExitCode.PARTIAL


class Pool:
    """Open connections, one per host, shared by the operations of one forge run."""

    def __init__(self, connector: Callable[[Host], Transport] = connect) -> None:
        self._connector = connector
        self._transports: dict[str, HostSession] = {}
        self._lock = threading.Lock()
        self._executors: dict[int, cf.ThreadPoolExecutor] = {}
        self._closing = threading.Lock()  # held by close() until every connection is closed
        self._closed = False

    def executor(self, workers: int) -> tuple[cf.ThreadPoolExecutor, bool]:
        """Threads for a fleet operation, and whether they are kept for the next one. Kept
        only for calls from the main thread (``--watch`` rounds: a thread pool started per
        round cost ~0.1 ms a host); a call from one of their threads gets its own (waiting
        on the pool it runs in could wait for ever)."""
        if threading.current_thread() is not threading.main_thread():
            return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forge-host"), False
        with self._lock:
            ex = self._executors.get(workers)
            if ex is None:
                ex = self._executors[workers] = cf.ThreadPoolExecutor(workers, thread_name_prefix="forge-host")
            return ex, True

    def drop_executor(self, ex: cf.ThreadPoolExecutor) -> None:
        """Stop keeping ``ex`` (a host in it ran past the operation's deadline and still holds
        a thread): the next operation starts its own."""
        with self._lock:
            for k, v in list(self._executors.items()):
                if v is ex:
                    del self._executors[k]
        ex.shutdown(wait=False, cancel_futures=True)

    def get(self, host: Host) -> HostSession:
        with self._lock:
            if self._closed:
                raise ConnectError(host.name, "forge closed its connections: the run is ending")
            s = self._transports.get(host.name)
            if s is None:
                s = self._transports[host.name] = HostSession(host, self._connector(host))
            return s

    def close(self) -> None:
        """End every connection, for good: a host's thread still at work (an interrupted
        operation) can neither reconnect nor get a new one. A second call, e.g. at the run's end
        after Ctrl-C started the first in a thread of its own, returns once the first is done:
        the process must not exit with connections half-closed (paramiko's own exit hook then
        stops them at random and a jump hop's close can fail on its closed hop)."""
        with self._closing:
            with self._lock:
                self._closed = True
                transports, self._transports = list(self._transports.values()), {}
                executors, self._executors = list(self._executors.values()), {}
            for t in transports:
                t.end()
            for ex in executors:
                ex.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(
    hosts: Sequence[Host],
    fn: Callable[[HostSession], T],
    *,
    pool: Pool,
    concurrency: int = DEFAULT_CONCURRENCY,
    deadline_s: float | None = None,
    progress: Progress | None = None,
) -> FleetResult[T]:
    """Run ``fn(session)`` for every host, ``concurrency`` at a time.

    Each host's own timeouts (connect, command) bound its work; ``deadline_s`` additionally
    bounds the whole call: a host still busy then is reported as timed out.
    ``progress`` hears of each host as it finishes (from worker threads): ``finish(name, ok,
    reason)``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    results: dict[str, HostResult[T]] = {}

    def one(host: Host) -> HostResult[T]:
        started = time.monotonic()
        try:
            value = fn(pool.get(host))
            r: HostResult[T] = HostResult(host, value=value, duration_s=time.monotonic() - started)
        except ForgeError as e:
            r = HostResult(host, error=e, duration_s=time.monotonic() - started)
        except Exception as e:  # a bug or an unmapped library error: keep it per host
            err = HostError(host.name, f"{type(e).__name__}: {e}")
            err.__cause__ = e
            r = HostResult(host, error=err, duration_s=time.monotonic() - started)
        if progress is not None:
            progress.finish(host.name, r.ok, r.reason)
        return r

    if not hosts:
        return FleetResult(())
    ex, kept = pool.executor(concurrency)
    abandoned = True
    try:
        futures = {ex.submit(one, h): h for h in hosts}
        try:
            for fut in cf.as_completed(futures, timeout=deadline_s):
                r = fut.result()
                results[r.host.name] = r
            abandoned = False
        except cf.TimeoutError:
            for fut, h in futures.items():
                if h.name not in results:
                    fut.cancel()
                    results[h.name] = HostResult(
                        h, error=HostError(h.name, f"no answer within {deadline_s:g} s"), duration_s=deadline_s or 0.0
                    )
    finally:
        if not kept:
            ex.shutdown(wait=False, cancel_futures=True)
        elif abandoned:  # a host still holds a thread, or Ctrl-C: do not keep these threads
            pool.drop_executor(ex)
    return FleetResult(tuple(results[h.name] for h in hosts))

"""`forge hosts --check`: can forge reach each host, how fast, and which Docker runs there."""

from __future__ import annotations

import time
from dataclasses import dataclass

from forge import dockercli
from forge.session import HostSession


@dataclass(frozen=True)
class HostCheck:
    connect_ms: float  # opening the connection (TCP, key exchange, auth) plus one command
    latency_ms: float  # one command on the open connection
    docker_version: str | None  # None: no Docker server reachable
    docker_error: str | None = None


def check_host(s: HostSession, *, timeout: float = 10.0) -> HostCheck:
    started = time.monotonic()
    s.run(["true"], timeout=timeout, check=True)
    connect_ms = (time.monotonic() - started) * 1000
    started = time.monotonic()
    s.run(["true"], timeout=timeout, check=True)
    latency_ms = (time.monotonic() - started) * 1000
    r = s.run(s.docker("version", "--format", "{{.Server.Version}}"), timeout=timeout)
    if r.ok and r.stdout.strip():
        return HostCheck(connect_ms, latency_ms, r.stdout.strip())
    why = dockercli.unavailable(r.stderr + r.stdout, r.exit_status)
    reason = why or (r.stderr.strip().splitlines() or [f"exit status {r.exit_status}"])[-1]
    return HostCheck(connect_ms, latency_ms, None, reason)

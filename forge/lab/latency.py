"""Delay on the lab's SSH links (``forge lab up --latency MS``), from user space.

This kernel has no ``netem`` (../shared/notes/lab-facts.md), so the delay comes from a proxy:
every TCP connection this machine opens to port 22 of the lab's network is redirected by one
``iptables -t nat OUTPUT ... REDIRECT`` rule to a proxy on this machine, which connects on to
where the connection was going (``SO_ORIGINAL_DST``) and holds every chunk it passes for the
delay, in each direction, in order. The proxy's own connections carry a firewall mark that the
rule skips, so they are not redirected again. Connections between lab hosts (their own
namespaces) are not delayed: only the client's links, which are what forge's round trips
cross.

A round trip through it costs two delays (one each way) plus the proxy's own time, which
:func:`measure` reports beside every figure taken with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from forge.lab.proc import kill_all, pid_alive, read_pidfile

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
SO_MARK = 36
MARK = 0x4652  # "FR": the proxy's own connections, which the redirect rule lets pass
CHUNK = 256 * 1024


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where a REDIRECTed connection was going."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def _delayed_copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk (and the end) ``delay_s`` after it arrived."""
    loop = asyncio.get_running_loop()
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def take() -> None:
        while True:
            data = await reader.read(CHUNK)
            line.put_nowait((loop.time() + delay_s, data))
            if not data:
                return

    taker = asyncio.create_task(take())
    try:
        while True:
            due, data = await line.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    finally:
        taker.cancel()


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, upstream: tuple[str, int] | None
) -> None:
    try:
        target = upstream or original_destination(writer.get_extra_info("socket"))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with contextlib.suppress(OSError):  # without CAP_NET_ADMIN (tests): no mark, no rule either
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, target)
        up_reader, up_writer = await asyncio.open_connection(sock=sock)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_delayed_copy(reader, up_writer, delay_s), _delayed_copy(up_reader, writer, delay_s))
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for w in (writer, up_writer):
            w.close()


async def serve(port: int, delay_s: float, *, host: str = "0.0.0.0", upstream: tuple[str, int] | None = None) -> None:
    """Run the proxy until cancelled. ``upstream``: a fixed destination instead of the original
    one (tests, without the redirect rule)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await _serve_one(reader, writer, delay_s, upstream)

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def redirect_rule(network: str, port: int) -> list[str]:
    """The iptables rule (without -A/-D) that sends this machine's SSH connections into the lab's
    network through the proxy on ``port``."""
    return ["-t", "nat", "OUTPUT", "-p", "tcp", "-d", network, "--dport", "22", "-m", "mark", "!", "--mark",
            str(MARK), "-j", "REDIRECT", "--to-ports", str(port)]  # fmt: skip


def measure(address: str, port: int, *, rounds: int = 5) -> float:
    """The median time to open a TCP connection and read the server's first bytes (an SSH
    banner): what one round trip costs through the proxy, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with socket.create_connection((address, port), timeout=10) as s:
            s.recv(64)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m forge.lab.latency", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True, help="each way")
    p.add_argument("--host", default="0.0.0.0")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.port, args.delay_ms / 1000.0, host=args.host))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------------------ in the lab


def port_of(network: str) -> int:
    """The proxy's port for a lab network: one per lab on the machine (10.77.0.0/24: 58432)."""
    return 40000 + int(ipaddress.IPv4Network(network).network_address) % 20000


def pidfile(root: Path) -> Path:
    return root / "latency.pid"


def stop(root: Path) -> None:
    """End the lab's proxy, if one runs (a pid reused since by another program is left alone)."""
    pid = read_pidfile(pidfile(root))
    if pid is not None and pid_alive(pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"forge.lab.latency" in cmdline:
            kill_all([pid], grace=2.0)
    pidfile(root).unlink(missing_ok=True)


def start(root: Path, network: str, delay_ms: float) -> int:
    """Start the lab's proxy (detached, its output in ``<root>/latency.log``); its pid."""
    port = port_of(network)
    argv = [sys.executable, "-m", "forge.lab.latency", "--port", str(port), "--delay-ms", f"{delay_ms:g}",
            "--host", "127.0.0.1"]  # fmt: skip
    with open(root / "latency.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pidfile(root).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until it listens
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc.pid
        if proc.poll() is not None:
            raise OSError(f"the delay proxy exited at once (see {root / 'latency.log'})")
        time.sleep(0.05)
    raise OSError(f"the delay proxy does not listen on 127.0.0.1:{port}")

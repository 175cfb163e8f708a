"""The lab's delay line (forge/lab/latency.py) on this machine's loopback: bytes pass whole and in
order, the end of a stream passes, and each way is held at least the delay (a lower bound: the
proxy holds every chunk that long, however fast the machine is)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from forge.lab import latency

DELAY_S = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def echo_and_proxy() -> Iterator[int]:
    """An echo server (it closes its side after the client's end) behind the delay proxy; the
    proxy's port."""
    loop = asyncio.new_event_loop()
    echo_port, proxy_port = _free_port(), _free_port()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    servers: list[asyncio.Server] = []

    async def start() -> None:
        servers.append(await asyncio.start_server(echo, "127.0.0.1", echo_port))
        loop.create_task(latency.serve(proxy_port, DELAY_S, host="127.0.0.1", upstream=("127.0.0.1", echo_port)))

    async def stop() -> None:
        servers[0].close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    for _ in range(100):  # until the proxy listens
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", proxy_port), timeout=1):
            break
        time.sleep(0.02)
    yield proxy_port
    asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_bytes_pass_whole_in_order_and_the_end_passes(echo_and_proxy: int) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", echo_and_proxy), timeout=30) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
        sender.join()
    assert bytes(got) == payload  # and recv returned b"": the echo's end came through


def test_a_round_trip_is_held_at_least_the_delay_each_way(echo_and_proxy: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_and_proxy), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(3):
            start = time.perf_counter()
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
            assert time.perf_counter() - start >= 2 * DELAY_S


def test_the_redirect_rule_skips_the_proxys_own_connections() -> None:
    rule = latency.redirect_rule("10.77.0.0/24", 40022)
    assert rule[:3] == ["-t", "nat", "OUTPUT"]
    assert rule[rule.index("--mark") - 1 : rule.index("--mark") + 2] == ["!", "--mark", str(latency.MARK)]
    assert rule[-2:] == ["--to-ports", "40022"] and "--dport" in rule and "10.77.0.0/24" in rule

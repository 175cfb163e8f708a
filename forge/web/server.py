"""`forge serve`: a read-only page of the fleet, now and over time.

A small HTTP server from the standard library. One thread probes the fleet every
``interval`` seconds (however many people watch) and keeps the last answer; the page fetches
it as JSON and draws it with DOM calls only (text, never markup), so a label a host's user
planted shows as text. The history comes from the database `forge record` writes.

Safe by default: it binds 127.0.0.1 (reach it over ``ssh -L`` or put it behind the group's
own proxy); it answers GET and HEAD only; it refuses requests whose Host header is not one
of its own names (a web page elsewhere cannot read it by DNS rebinding); every response
forbids inline script, framing and sniffing (Content-Security-Policy, nosniff).
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from forge.durations import parse_duration

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}

#: The longest history the page may ask for.
MAX_SINCE_S = 366 * 86400


@dataclass
class Snapshot:
    """The fleet's last probe, as the page gets it."""

    data: dict[str, Any] | None = None
    at: float = 0.0
    took_s: float = 0.0
    error: str | None = None


@dataclass
class Fleet:
    """Probes the fleet in the background and keeps the last answer."""

    probe: Callable[[], dict[str, Any]]
    interval: float
    snapshot: Snapshot = field(default_factory=Snapshot)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                data = self.probe()
                self.snapshot = Snapshot(data, time.time(), time.monotonic() - started)
            except Exception as e:  # the page shows it and the next probe tries again
                self.snapshot = Snapshot(self.snapshot.data, self.snapshot.at, 0.0, f"{type(e).__name__}: {e}")
            self.ready.set()
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        threading.Thread(target=self.run, name="forge-serve-probe", daemon=True).start()


@dataclass
class Site:
    """What the handler serves: the fleet, the history (a function of the period's length
    in seconds, or None when there is no database), and the names it answers to."""

    fleet: Fleet
    history: Callable[[float], dict[str, Any]] | None
    allowed_hosts: frozenset[str]
    refresh_s: float


def allowed_hosts(bind: str, port: int, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The Host header values the server answers: its own address and, on loopback,
    ``localhost``; plus any names given (a proxy's), each with and without the port."""
    names = {bind, *extra}
    try:
        ip = ipaddress.ip_address(bind)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        names |= {"localhost", "127.0.0.1", "::1"}
    out = set()
    for n in names:
        host = f"[{n}]" if ":" in n and not n.startswith("[") else n
        out |= {host.lower(), f"{host}:{port}".lower()}
    return frozenset(out)


class Handler(BaseHTTPRequestHandler):
    site: Site  # set on the subclass made by make_server
    server_version = "forge"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: a page polls every few seconds

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _serve(self, *, body: bool) -> None:
        host = (self.headers.get("Host") or "").lower()
        if host not in self.site.allowed_hosts:
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host name\n", "text/plain; charset=utf-8", body=body)
            return
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, kind = STATIC[url.path]
            data = importlib.resources.files("forge.web").joinpath("static", name).read_bytes()
            self._send(HTTPStatus.OK, data, kind, {"Cache-Control": "no-cache"}, body=body)
        elif url.path == "/api/now":
            self._json(self._now(), body=body)
        elif url.path == "/api/history":
            self._history(parse_qs(url.query), body=body)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", body=body)

    def _now(self) -> dict[str, Any]:
        s = self.site.fleet.snapshot
        return {"at": s.at, "took_s": s.took_s, "error": s.error, "refresh_s": self.site.refresh_s, "fleet": s.data}

    def _history(self, query: dict[str, list[str]], *, body: bool) -> None:
        if self.site.history is None:
            self._json({"error": "no history: run `forge record` from cron", "points": []}, body=body)
            return
        try:
            since = parse_duration((query.get("since") or ["24h"])[0])
        except ValueError as e:
            self._json({"error": str(e)}, status=HTTPStatus.BAD_REQUEST, body=body)
            return
        self._json(self.site.history(min(since, MAX_SINCE_S)), body=body)

    def _json(self, data: Any, *, status: HTTPStatus = HTTPStatus.OK, body: bool) -> None:
        raw = json.dumps(data, default=str).encode()
        self._send(status, raw, "application/json", {"Cache-Control": "no-store"}, body=body)

    def _send(
        self, status: HTTPStatus, data: bytes, kind: str, headers: dict[str, str] | None = None, *, body: bool = True
    ) -> None:
        self.send_response(status)
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def make_server(site: Site, bind: str, port: int) -> ThreadingHTTPServer:
    """The server on ``bind:port`` (port 0: any free one), not yet serving."""
    import socket

    class SiteHandler(Handler):
        pass

    SiteHandler.site = site

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

    return Server((bind, port), SiteHandler)


def static_dir() -> Path:
    return Path(str(importlib.resources.files("forge.web").joinpath("static")))

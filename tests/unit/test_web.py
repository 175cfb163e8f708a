"""forge serve's HTTP server on a real socket, with a scripted fleet: what it serves, the
headers that keep the page safe, and what it refuses."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from forge.web.server import Fleet, Site, allowed_hosts, make_server


@pytest.fixture()
def site() -> Iterator[tuple[str, int, list[float]]]:
    asked: list[float] = []

    def history(since_s: float) -> dict[str, Any]:
        asked.append(since_s)
        return {"points": [], "users": []}

    fleet = Fleet(lambda: {"hosts": [], "summary": {"free": 3}}, interval=60)
    s = Site(fleet, history, frozenset(), refresh_s=60)
    server = make_server(s, "127.0.0.1", 0)
    s.allowed_hosts = allowed_hosts("127.0.0.1", server.server_port)
    fleet.start()
    assert fleet.ready.wait(10)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield "127.0.0.1", server.server_port, asked
    finally:
        fleet.stop.set()
        server.shutdown()
        server.server_close()


def get(
    site: tuple[str, int, Any], path: str, *, method: str = "GET", host: str | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(site[0], site[1], timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host or f"127.0.0.1:{site[1]}")
    conn.endheaders()
    return conn.getresponse()


def test_the_page_and_its_script_with_headers_that_forbid_inline_script(site: Any) -> None:
    r = get(site, "/")
    body = r.read().decode()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert '<script src="/app.js" defer></script>' in body and "<script>" not in body
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    js = get(site, "/app.js")
    text = js.read().decode()
    assert js.status == 200 and "innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text


def test_now_is_the_background_probe_s_last_answer(site: Any) -> None:
    data = json.loads(get(site, "/api/now").read())
    assert data["fleet"] == {"hosts": [], "summary": {"free": 3}} and data["error"] is None and data["at"] > 0


def test_history_takes_a_duration_and_caps_it(site: Any) -> None:
    assert get(site, "/api/history?since=7d").status == 200
    assert get(site, "/api/history?since=10y").status == 200
    bad = get(site, "/api/history?since=soon")
    assert bad.status == 400 and "is not a duration" in json.loads(bad.read())["error"]
    assert site[2] == [7 * 86400, 366 * 86400]


def test_other_host_names_and_writes_are_refused(site: Any) -> None:
    assert get(site, "/", host="evil.example").status == 421  # DNS rebinding
    assert get(site, "/", host=f"localhost:{site[1]}").status == 200
    for method in ("POST", "PUT", "DELETE"):
        r = get(site, "/api/now", method=method)
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
    assert get(site, "/../../etc/passwd").status == 404
    assert get(site, "/api/now", method="HEAD").read() == b""


def test_allowed_names() -> None:
    assert allowed_hosts("127.0.0.1", 8470) >= {"127.0.0.1:8470", "localhost:8470", "[::1]:8470", "localhost"}
    public = allowed_hosts("10.0.0.5", 80, ("fleet.lab.example",))
    assert "localhost:80" not in public and {"10.0.0.5:80", "fleet.lab.example"} <= public

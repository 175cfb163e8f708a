"""`forge record`, `forge report` and `forge serve` on the lab: real probes of real hosts into a
real SQLite file, and the page in a real headless browser (Chromium from Debian)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Browser, find_browser
from tests.conftest import LabHandle
from tests.lab import envkit

pytestmark = pytest.mark.lab

EVIL_ENV = "<img src=x onerror=\"document.title='pwned'\">"
EVIL_OWNER = "<script>document.title='pwned'</script>"


def forge(lab: LabHandle, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return envkit.forge(lab.inventory_path, *args, timeout=timeout)


@pytest.fixture()
def planted(lab: LabHandle) -> Iterator[str]:
    """A container of the other user's on gpu2 claiming its first GPU, with markup in its
    forge labels; yields that GPU's UUID."""
    host = "gpu2"
    base = lab.load_base_image(host)  # on the host whatever ran before
    r = forge(lab, "gpus", host, "--json")
    gpu = json.loads(r.stdout)["hosts"][0]["gpus"][0]["uuid"]
    name = f"planted-{uuid.uuid4().hex[:8]}"
    labels = [f"forge.env={EVIL_ENV}", f"forge.owner={EVIL_OWNER}", f"forge.gpus={gpu}"]
    argv = ["run", "-d", "--name", name, *(x for label in labels for x in ("--label", label)), base, "sleep", "600"]
    r = lab.docker_as_other(host, *argv)
    assert r.returncode == 0, r.stderr
    try:
        yield gpu
    finally:
        lab.docker(host, "rm", "-f", name)


def test_record_then_report(lab: LabHandle, planted: str, tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    first = forge(lab, "record", "--db", str(db), "--json")
    assert first.returncode == 0, first.stderr
    time.sleep(3)
    with lab.host_down("gpu3"):
        second = forge(lab, "record", "--db", str(db), "--json")
    assert second.returncode == 4, second.stderr  # gpu3 did not answer: the others are recorded
    assert "gpu3: not recorded: " in second.stderr
    done = json.loads(second.stdout)
    skipped = {x["host"] for x in done["not_recorded"]}
    assert "gpu3" in skipped and done["hosts"] + len(skipped) == len(lab.hosts)
    by_host = json.loads(forge(lab, "report", "--db", str(db), "--since", "1h", "--by", "host", "--json").stdout)
    rows = {r["host"]: r for r in by_host["rows"]}
    gap = done["at"] - json.loads(first.stdout)["at"]
    for host, row in rows.items():
        if host == "gpu3":  # down at the second record: a gap, nothing invented
            continue
        # every GPU seen from the first record to the second
        assert row["observed_gpu_h"] == pytest.approx(row["gpus"] * gap / 3600, abs=1e-4), host  # JSON rounds
    assert "gpu3" not in rows or rows["gpu3"]["observed_gpu_h"] == 0
    # The planted container holds gpu2's first GPU: its markup names are recorded as "?".
    by_env = json.loads(forge(lab, "report", "--db", str(db), "--since", "1h", "--by", "env", "--json").stdout)
    assert {(r["user"], r["env"]) for r in by_env["rows"]} >= {("?", "?")}
    assert EVIL_ENV not in db.read_bytes().decode("latin-1") and "<script>" not in db.read_bytes().decode("latin-1")


@pytest.fixture()
def server(lab: LabHandle, tmp_path: Path) -> Iterator[str]:
    db = tmp_path / "history.sqlite"
    assert forge(lab, "record", "--db", str(db)).returncode in (0, 4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge", "-i", str(lab.inventory_path), "serve", "--port", "0", "--interval", "2",
         "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        yield f"http://127.0.0.1:{m.group(1)}/"
    finally:
        proc.terminate()
        proc.wait(30)


def _gpus_json(lab: LabHandle) -> dict[str, Any]:
    return dict(json.loads(forge(lab, "gpus", "--json").stdout))


@pytest.mark.skipif(find_browser() is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")
def test_the_page_shows_what_forge_gpus_shows_and_runs_no_planted_markup(
    lab: LabHandle, planted: str, server: str, tmp_path: Path
) -> None:
    before = _gpus_json(lab)
    with Browser(width=1280, height=1000) as b:
        b.open(server)
        b.wait_for("document.body && document.body.dataset.ready === 'now'")
        b.wait_for("!!document.querySelector('#chart svg')")
        # one record is no whole hour yet: the page says when its chart starts
        b.wait_for("document.getElementById('history-status').textContent.includes('two whole hours')")
        page = b.js(
            "JSON.stringify({free: +document.getElementById('free-count').textContent,"
            " gpus: +document.getElementById('gpu-count').textContent,"
            " answered: document.getElementById('answered-count').textContent,"
            " rows: [...document.querySelectorAll('#gpus tbody tr')]"
            "   .map(r => [r.dataset.uuid, r.dataset.free === 'true', r.textContent]),"
            " title: document.title,"
            " planted: document.querySelectorAll('main img, table img, table script, #hosts img').length})"
        )
        b.screenshot(tmp_path / "serve.png")
    after = _gpus_json(lab)
    got = json.loads(page)
    s = before["summary"]
    assert s == after["summary"]  # the lab did not change meanwhile
    assert (got["free"], got["gpus"], got["answered"]) == (s["free"], s["gpus"], f"{s['answered']}/{s['hosts']}")
    want = {g["uuid"]: g["free"] for h in before["hosts"] for g in h["gpus"]}
    assert {u: free for u, free, _ in got["rows"]} == want
    # The planted labels are on the page as text, and nothing of them ran.
    (row,) = [text for u, _, text in got["rows"] if u == planted]
    assert EVIL_ENV in row and EVIL_OWNER in row
    assert got["title"] == "forge — the fleet" and got["planted"] == 0
    assert (tmp_path / "serve.png").read_bytes()[:4] == b"\x89PNG"


def test_the_server_answers_only_its_own_names_and_only_reads(server: str) -> None:
    import urllib.error
    import urllib.request

    port = server.rsplit(":", 1)[1].rstrip("/")
    ok = urllib.request.urlopen(server, timeout=10)
    assert ok.status == 200 and "script-src 'self'" in ok.headers["Content-Security-Policy"]
    for host in ("evil.example", f"evil.example:{port}"):
        req = urllib.request.Request(server + "api/now", headers={"Host": host})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 421
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(server + "api/now", data=b"x", method="POST"), timeout=10)
    assert e.value.code == 405

"""`forge report` on a history written through the store: table, JSON, CSV, plot, errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge.gpu.holders import Holder
from forge.history.samples import Sample
from forge.history.store import History, Retention

ALICE, BOB = Holder("alice", "dev"), Holder("bob")


@pytest.fixture()
def history(tmp_path: Path) -> Path:
    """Three days of a two-host fleet sampled every 10 min, ending now: gpu1's GPU held by
    alice at 60 % by day and free at night, gpu2's held by bob at 1 % (idle) all the time."""
    path = tmp_path / "h.sqlite"
    now = int(time.time())
    with History(path, Retention(max_gap=900)) as h:
        for t in range(now - 3 * 86400, now + 1, 600):
            day = 8 <= time.localtime(t).tm_hour < 20
            a = Sample(
                "gpu1", "GPU-a", 0, "NVIDIA H200", 60.0 if day else 0.0, 9000, 300.0, not day, (ALICE,) if day else ()
            )
            b = Sample("gpu2", "GPU-b", 0, "NVIDIA H200", 1.0, 500, None, False, (BOB,))
            h.record([a, b], t)
    return path


def forge(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    inv = tmp_path / "hosts.toml"
    inv.write_text('[[hosts]]\nname = "gpu1"\naddress = "192.0.2.1"\n')
    return subprocess.run(
        [sys.executable, "-m", "forge", "-i", str(inv), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_report_by_user_as_a_table(tmp_path: Path, history: Path) -> None:
    r = forge(tmp_path, "report", "--db", str(history), "--since", "3d")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("forge report: ") and "(3d" in lines[0]  # from a whole hour: samples are kept 2d
    assert lines[2].split() == ["USER", "HELD", "GPU-h", "WORKED", "GPU-h", "WORKED", "IDLE", "GPU-h", "ENERGY", "kWh"]
    bob = next(line.split() for line in lines if line.startswith("bob "))
    alice = next(line.split() for line in lines if line.startswith("alice "))
    assert bob[1] == "72.0" and bob[5] == "72.0" and bob[6] == "-"  # held 3 days, all of it idle, no power reading
    assert alice[1] == "36.0" and alice[3:5] == ["60", "%"] and alice[-1] == "10.8"  # 36 h x 300 W
    assert "usually free hours: 20:00-08:00 (1.0 of 2 GPUs free on average)" in lines, r.stdout
    assert "usually free hosts" not in r.stdout  # gpu1 free half the time: not more often than not


def test_report_json_and_csv_agree(tmp_path: Path, history: Path) -> None:
    data = json.loads(forge(tmp_path, "report", "--db", str(history), "--since", "3d", "--by", "env", "--json").stdout)
    assert [(row["user"], row["env"]) for row in data["rows"]] == [("alice", "dev")]
    assert data["rows"][0]["held_gpu_h"] == pytest.approx(36)
    assert data["total"]["observed_gpu_h"] == pytest.approx(144)
    assert data["usually_free"]["hours"] == [20, 21, 22, 23, 0, 1, 2, 3, 4, 5, 6, 7] or sorted(
        data["usually_free"]["hours"]
    ) == [0, 1, 2, 3, 4, 5, 6, 7, 20, 21, 22, 23]
    r = forge(tmp_path, "report", "--db", str(history), "--since", "3d", "--by", "host", "--csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["host"] for row in rows] == ["gpu2", "gpu1"]  # most held first
    assert float(rows[1]["free_gpu_h"]) == pytest.approx(36)


def test_report_plot_draws_svg_and_png(tmp_path: Path, history: Path) -> None:
    pytest.importorskip("matplotlib")
    for name in ("fleet.svg", "fleet.png"):
        out = tmp_path / name
        r = forge(tmp_path, "report", "--db", str(history), "--plot", str(out))
        assert r.returncode == 0, r.stderr
        assert r.stdout.rstrip().endswith(f"drew {out}")
    assert (tmp_path / "fleet.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = forge(tmp_path, "report", "--db", str(history), "--plot", str(tmp_path / "fleet.gif"))
    assert r.returncode == 1 and "must end in .svg or .png" in r.stderr


def test_report_errors_say_what_to_do(tmp_path: Path) -> None:
    r = forge(tmp_path, "report", "--db", str(tmp_path / "none.sqlite"))
    assert r.returncode == 1 and "no history at" in r.stderr and "forge record" in r.stderr
    assert not (tmp_path / "none.sqlite").exists()
    r = forge(tmp_path, "report", "--db", str(tmp_path / "none.sqlite"), "--since", "soon")
    assert r.returncode == 2 and "is not a duration" in r.stderr


def test_record_says_each_missing_host_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a host said (a stderr tail, "\\n"-joined) must not forge a line of cron's mail."""
    from click.testing import CliRunner

    import forge.gpu.survey as survey
    from forge.cli.main import cli
    from forge.gpu.policy import FreePolicy
    from forge.inventory import Host

    said = "refused\nforge record: gpu2: recorded\x1b[2J"

    def down(inv: object, hosts: list[Host], **_: object) -> list[survey.HostReport]:
        return [survey.HostReport(h, "me", FreePolicy(), None, said) for h in hosts]

    monkeypatch.setattr(survey, "survey", down)
    inv = tmp_path / "hosts.toml"
    inv.write_text('[[hosts]]\nname = "gpu1"\naddress = "192.0.2.1"\n')
    r = CliRunner().invoke(cli, ["-i", str(inv), "record", "--db", str(tmp_path / "h.sqlite")])
    assert r.exit_code == 5, r.output
    assert r.stderr == "forge record: gpu1: not recorded: refused\\nforge record: gpu2: recorded\\x1b[2J\n"

"""`forge sync` and `forge sync --check` output when some images or hosts fail (no SSH: the
library calls are replaced; what is tested is what forge.images.runs makes of their results,
what the CLI reports, and its exit code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import forge.images.runs as runs
from forge.cli.main import cli
from forge.errors import CommandFailed, ConnectError, HostError
from forge.fleet import FleetResult, HostResult
from forge.images.inspect import HostImages, ImageInfo, ImageNotFound
from forge.images.sync import HostPlan, HostSync, SyncReport
from forge.inventory import Host

IMAGE = ImageInfo("sha256:" + "1" * 64, 100, ("ok:1",), ("sha256:l",))
INVENTORY = "".join(f'[[hosts]]\nname = "{n}"\naddress = "192.0.2.{i}"\n' for i, n in enumerate(["src", "h1", "h2"], 1))


@pytest.fixture()
def inv(tmp_path: Path) -> str:
    p = tmp_path / "hosts.toml"
    p.write_text(INVENTORY)
    return str(p)


def _gone(ref: str, source: Host) -> None:
    if ref == "gone:1":
        raise ImageNotFound(source.name, f"has no image {ref!r}")


def _fake_plan(ref: str, *, source: Host, targets: list[Host], **_: Any) -> Any:
    _gone(ref, source)
    results = [
        HostResult(targets[0], value=HostPlan(targets[0], "current", HostImages())),
        HostResult(targets[1], error=HostError("h2", "cannot list Docker images: Cannot connect to the daemon")),
    ]
    return IMAGE, ("ok:1",), FleetResult(tuple(results))


def _fake_sync(ref: str, *, source: Host, targets: list[Host], **_: Any) -> SyncReport:
    _gone(ref, source)
    results = tuple(
        HostResult(h, value=HostSync(h.name, "current", layers_total=1)) for h in targets if h is not source
    )
    return SyncReport(ref, IMAGE, ("ok:1",), FleetResult(results))


def _run(inv: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-i", inv, "sync", "--from", "src", *args], catch_exceptions=False)


def test_json_lists_every_host_of_an_image_the_source_lacks(inv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The failed image's hosts used to be missing from --json (and from --quiet, one line per host).
    monkeypatch.setattr(runs, "sync_image", _fake_sync)
    monkeypatch.setenv("FORGE_LOCK_DIR", str(Path(inv).parent))
    r = _run(inv, "gone:1", "ok:1", "--json")
    assert r.exit_code == 4
    rows = json.loads(r.stdout)["results"]
    assert [(x["image"], x["host"], x["ok"]) for x in rows] == [
        ("gone:1", "h1", False),
        ("gone:1", "h2", False),
        ("ok:1", "h1", True),
        ("ok:1", "h2", True),
    ]
    assert "src: has no image 'gone:1'" in rows[0]["error"]
    quiet = _run(inv, "gone:1", "ok:1", "--quiet")
    lines = quiet.stdout.splitlines()
    assert quiet.exit_code == 4 and len(lines) == 4
    assert " forge sync gone:1 h1 FAILED " in lines[0] and " forge sync ok:1 h2 ok current" in lines[3]


def test_check_reports_the_other_images_when_the_source_lacks_one(inv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # It used to stop at the first image the source lacks: exit 1 and nothing about the others.
    monkeypatch.setattr(runs, "plan", _fake_plan)
    r = _run(inv, "gone:1", "ok:1", "--check", "--json")
    assert r.exit_code == 4
    rows = json.loads(r.stdout)["results"]
    assert [(x["image"], x["host"], x["status"]) for x in rows] == [
        ("gone:1", "h1", "error"),
        ("gone:1", "h2", "error"),
        ("ok:1", "h1", "current"),
        ("ok:1", "h2", "error"),  # reachable, but dockerd did not answer: not "unreachable"
    ]
    assert "Cannot connect to the daemon" in rows[3]["error"]


def test_check_calls_only_connection_failures_unreachable(inv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(ref: str, *, targets: list[Host], **_: Any) -> Any:
        return (
            IMAGE,
            (),
            FleetResult(tuple(HostResult(h, error=ConnectError(h.name, "connection refused")) for h in targets)),
        )

    monkeypatch.setattr(runs, "plan", down)
    r = _run(inv, "ok:1", "--check", "--quiet")
    assert r.exit_code == 5
    assert [line.split()[-3:] for line in r.stdout.splitlines()] == [["unreachable:", "connection", "refused"]] * 2


def test_read_is_passed_through_and_reported(inv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake(ref: str, *, source: Host, targets: list[Host], read: str = "auto", **_: Any) -> SyncReport:
        seen.append(read)
        results = tuple(
            HostResult(h, value=HostSync(h.name, "send", layers_total=1, layers_sent=1, tar_bytes=10, wire_bytes=5))
            for h in targets
            if h is not source
        )
        how = "save" if read == "save" else "store"
        note = "the source is another machine" if how == "save" else ""
        return SyncReport(ref, IMAGE, ("ok:1",), FleetResult(results), read=how, read_note=note)

    monkeypatch.setattr(runs, "sync_image", fake)
    out = _run(inv, "--json", "--read", "save", "ok:1")
    assert out.exit_code == 0 and seen == ["save"]
    assert {r["read"] for r in json.loads(out.output)["results"]} == {"save"}
    table = _run(inv, "ok:1")
    assert seen == ["save", "auto"]
    assert "read from the daemon's layer store" in table.output.splitlines()[0]
    assert (
        _run(inv, "--read", "save", "ok:1")
        .output.splitlines()[0]
        .endswith("read with docker save (the source is another machine)")
    )
    quiet = _run(inv, "--quiet", "ok:1").output.splitlines()
    assert len(quiet) == 2 and all(" ok send layers=1/1 wire=5B codec=none read=store " in line for line in quiet)
    bad = CliRunner().invoke(cli, ["-i", inv, "sync", "--read", "tape", "ok:1"])
    assert bad.exit_code == 2 and "'tape' is not one of" in bad.output


def test_the_way_each_host_was_sent_to_and_why_not_the_asked_one_are_reported(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, object]] = []

    def fake(ref: str, *, source: Host, targets: list[Host], via: str = "client", **kw: Any) -> SyncReport:
        seen.append((via, kw.get("registry_settings")))
        why = "gpu1 cannot reach it over SSH: Connection refused\x1b[2J"
        results = tuple(
            HostResult(
                h,
                value=HostSync(
                    h.name,
                    "send",
                    layers_total=1,
                    layers_sent=1,
                    via="client" if i else "direct",
                    note=why if i else "",
                ),
            )
            for i, h in enumerate(t for t in targets if t is not source)
        )
        return SyncReport(ref, IMAGE, ("ok:1",), FleetResult(results), read="save")

    monkeypatch.setattr(runs, "sync_image", fake)
    table = CliRunner().invoke(cli, ["-i", inv, "sync", "--via", "direct", "ok:1"])
    assert table.exit_code == 0, table.output
    assert seen[-1][0] == "direct" and seen[-1][1] is not None  # the inventory's [registry] (empty) goes along
    assert "loaded (direct)" in table.stdout
    assert "sent through this machine: gpu1 cannot reach it over SSH: Connection refused\\x1b[2J" in table.stderr
    quiet = _run(inv, "--quiet", "ok:1").output.splitlines()
    assert seen[-1][0] == "auto"
    assert " via=direct " in quiet[0] and " via=client " in quiet[1]
    assert quiet[1].endswith("(through this machine: gpu1 cannot reach it over SSH: Connection refused\\x1b[2J)")
    rows = json.loads(_run(inv, "--json", "ok:1").output)["results"]
    assert [(r["via"], bool(r["note"])) for r in rows] == [("direct", False), ("client", True)]


def test_a_hop_cut_out_of_a_chain_is_said_as_it_is_not_as_sent_through_this_machine(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = "cut out of the chain (40 MiB behind): loaded on its own, the hops after it sent to around it"

    def fake(ref: str, *, source: Host, targets: list[Host], via: str = "client", **kw: Any) -> SyncReport:
        results = tuple(
            HostResult(h, value=HostSync(h.name, "send", layers_total=1, layers_sent=1, via="relay", note=cut))
            for h in targets
            if h is not source
        )
        return SyncReport(ref, IMAGE, ("ok:1",), FleetResult(results), read="save")

    monkeypatch.setattr(runs, "sync_image", fake)
    table = CliRunner().invoke(cli, ["-i", inv, "sync", "--via", "relay", "ok:1"])
    assert table.exit_code == 0, table.output
    assert "loaded (relay)" in table.stdout
    assert f": {cut}" in table.stderr and "through this machine" not in table.stderr
    quiet = _run(inv, "--quiet", "--via", "relay", "ok:1").output.splitlines()
    assert quiet[0].endswith(f" via=relay 0.0s ({cut})"), quiet[0]


FORGED = "denied\n2026-01-01T00:00:00+0000 forge sync ok:1 gpu9 ok send 1.0s\x1b[2J"


def test_quiet_log_lines_stay_one_line_per_host_whatever_the_host_said(
    inv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host's stderr tail (CommandFailed joins its last lines with "\n") used to print as
    # extra log lines: here a fake success line for a gpu9 that is not in the inventory.
    def failing(ref: str, *, source: Host, targets: list[Host], **_: Any) -> SyncReport:
        results = tuple(
            HostResult(h, error=CommandFailed(h.name, "docker load", 1, FORGED)) for h in targets if h is not source
        )
        return SyncReport(ref, IMAGE, ("ok:1",), FleetResult(results))

    monkeypatch.setattr(runs, "sync_image", failing)
    monkeypatch.setenv("FORGE_LOCK_DIR", str(Path(inv).parent))
    r = _run(inv, "ok:1", "--quiet")
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert all(" FAILED " in line and "\\ngpu9" not in line and "\x1b" not in line for line in lines)
    assert all(
        line.endswith("denied\\n2026-01-01T00:00:00+0000 forge sync ok:1 gpu9 ok send 1.0s\\x1b[2J") for line in lines
    )


def test_quiet_check_lines_stay_one_line_per_host(inv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(ref: str, *, targets: list[Host], **_: Any) -> Any:
        error = HostError("x", FORGED)
        return IMAGE, (), FleetResult(tuple(HostResult(h, error=error) for h in targets))

    monkeypatch.setattr(runs, "plan", down)
    check = _run(inv, "ok:1", "--check", "--quiet")
    lines = check.stdout.splitlines()
    assert len(lines) == 2 and all("denied\\n2026" in line for line in lines), check.stdout

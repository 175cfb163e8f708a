"""`forge gpus` views that fit a screen: per host, per user, laid out for the terminal's size,
drawn in place; nothing a host sends reaches the terminal as a control sequence."""

from __future__ import annotations

import io
import os
import signal

import click
import pytest

from forge.cli import gpuviews
from forge.cli.gpus import View, users_json
from forge.cli.gpuviews import Paint, Screen, host_rows, user_rows
from forge.gpu.model import Gpu, GpuHold, GpuProcess, HostGpus, ProbeStatus
from forge.gpu.policy import FreePolicy, GpuVerdict
from forge.gpu.survey import HostReport
from forge.inventory import Host


def _gpu(i: int, *, used: int = 0, util: int = 0, name: str = "NVIDIA H200") -> Gpu:
    return Gpu(i, f"GPU-{i:04d}", name, None, 143771, used, 143771 - used, util, 0, 30, 100.0, 700.0, None, None)


def _host(name: str, verdicts: list[GpuVerdict]) -> HostReport:
    gpus = HostGpus(name, ProbeStatus.OK, tuple(v.gpu for v in verdicts))
    return HostReport(Host(name=name, address="192.0.2.1"), "me", FreePolicy(), gpus, None, tuple(verdicts))


def fleet() -> list[HostReport]:
    alice = GpuHold("GPU-0001", "dev", "alice", "container")
    return [
        _host(
            "gpu1",
            [GpuVerdict(_gpu(0), (), True, "free"), GpuVerdict(_gpu(1, used=40000, util=90), (), False, "busy", alice)],
        ),
        _host(
            "gpu2",
            [
                GpuVerdict(
                    _gpu(0, used=10000, util=50),
                    (GpuProcess(7, "python", 10000, "GPU-0000", user="bob"),),
                    False,
                    "busy",
                ),
                GpuVerdict(
                    _gpu(1, used=10000, util=10),
                    (GpuProcess(8, "python", 10000, "GPU-0001", user="bob"),),
                    False,
                    "busy",
                ),
            ],
        ),
        HostReport(Host(name="gpu3", address="192.0.2.3"), "me", FreePolicy(), None, "connection refused\x1b[2J"),
    ]


def test_one_line_per_host_with_free_memory_a_bar_and_holders() -> None:
    rows = host_rows(fleet(), Paint(False))
    assert rows[0] == ["gpu1", "1/2", "NVIDIA H200", "39 / 281 GiB", rows[0][4], "alice [dev]"]
    assert rows[0][4].endswith(" 45 %") and len(rows[0][4].split()[0]) == 10
    assert rows[1][1] == "0/2" and rows[1][5] == "bob ×2"
    assert rows[2][1] == "-" and rows[2][5] == "unreachable: connection refused\\x1b[2J"  # shown, not obeyed


def test_colour_is_forge_s_own_and_only_when_asked() -> None:
    plain = host_rows(fleet(), Paint(False))
    coloured = host_rows(fleet(), Paint(True))
    assert coloured != plain
    assert [[click.unstyle(c) for c in row] for row in coloured] == plain
    assert "\x1b[2J" not in "".join(c for row in coloured for c in row)


def test_who_holds_what() -> None:
    rows = user_rows(fleet(), Paint(False))
    assert [r[:3] for r in rows] == [["bob", "2", "gpu2:0,1"], ["alice [dev]", "1", "gpu1:1"]]
    assert users_json(fleet())[0] == {
        "user": "bob",
        "env": None,
        "gpus": [
            {"host": "gpu2", "index": 0, "gpu": "0", "uuid": "GPU-0000"},
            {"host": "gpu2", "index": 1, "gpu": "1", "uuid": "GPU-0001"},
        ],
    }


def big_fleet(hosts: int = 20, gpus: int = 8) -> list[HostReport]:
    return [_host(f"node{h:02d}", [GpuVerdict(_gpu(i), (), True, "free") for i in range(gpus)]) for h in range(hosts)]


def test_a_fleet_larger_than_the_screen_is_shown_per_host() -> None:
    view = View(free_only=False, as_json=False, want=None, min_free_memory=0)
    on_screen = view.render(big_fleet(), lines=40)
    assert on_screen.splitlines()[0].split() == ["HOST", "FREE", "MODEL", "MEMORY", "UTIL", "HOLDERS"]
    assert len(on_screen.splitlines()) == 2 + 20
    piped = view.render(big_fleet(), lines=None)  # not a terminal: every GPU
    assert len(piped.splitlines()) == 2 + 160
    tall = view.render(big_fleet(2), lines=40)  # 16 GPU rows fit
    assert tall.splitlines()[0].split()[:2] == ["HOST", "GPU"]
    assert View(False, False, None, 0, by="gpu").render(big_fleet(), lines=40).count("\n") == 161


def test_frames_are_drawn_in_place_and_a_resize_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    sizes = iter([(30, 5), (30, 5)])
    monkeypatch.setattr(gpuviews, "terminal_size", lambda: next(sizes))
    before = signal.getsignal(signal.SIGWINCH)
    with Screen(out) as screen:
        assert signal.getsignal(signal.SIGWINCH) != before
        screen.draw(lambda columns, lines: "\n".join(f"{i} " + "x" * 40 for i in range(9)))
        os.kill(os.getpid(), signal.SIGWINCH)
        assert screen.resized.wait(1)
        screen.draw(lambda columns, lines: click.style("y" * 40, fg="red"))
        assert not screen.resized.is_set()
    text = out.getvalue()
    assert text.startswith("\x1b[?1049h\x1b[?25l") and text.endswith("\x1b[?25h\x1b[?1049l")
    first = text.split("\x1b[H")[1]
    assert first.count("\n") == 4 and first.endswith("\x1b[K\x1b[J")  # cut to 5 lines, the rest cleared
    assert all(len(line.replace("\x1b[K", "")) == 30 for line in first.replace("\x1b[J", "").split("\n"))
    second = text.split("\x1b[H")[2]
    assert click.unstyle(second.split("\x1b[K")[0]) == "y" * 30 and "\x1b[0m" in second
    assert signal.getsignal(signal.SIGWINCH) == before  # the old handler is back

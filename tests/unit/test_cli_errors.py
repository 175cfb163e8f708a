"""The CLI's error boundary (forge.cli.main.main): what a host said in an error reaches the
terminal cleaned, on one line, or in a cleaned traceback under --debug; exit codes by kind."""

from __future__ import annotations

import click
import pytest

from forge.cli.main import cli, main
from forge.errors import CommandFailed, ExitCode, LockHeld

#: What a host's stderr may hold: an OSC 52 clipboard write, and a line break to forge a line.
EVIL = "oops\x1b]52;c;cm0gLXJmIH4K\x07\nforge: all good"


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: BaseException, *args: str
) -> tuple[int, str]:
    @click.command()
    def boom() -> None:
        raise error

    monkeypatch.setitem(cli.commands, "boom", boom)
    with pytest.raises(SystemExit) as exited:
        main([*args, "boom"])
    code = exited.value.code
    assert isinstance(code, int)
    return code, capsys.readouterr().err


def test_debug_shows_the_traceback_cleaned(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(monkeypatch, capsys, CommandFailed("gpu1", "docker load", 1, EVIL), "--debug")
    assert code == ExitCode.ERROR
    assert "Traceback (most recent call last)" in err and "CommandFailed" in err
    assert "\x1b" not in err and "\x07" not in err
    assert "oops\\x1b]52;c;cm0gLXJmIH4K\\x07" in err


def test_debug_keeps_each_errors_exit_code(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(monkeypatch, capsys, LockHeld("held\x1b[2J"), "--debug")
    assert code == ExitCode.LOCKED and "Traceback" in err and "held\\x1b[2J" in err and "\x1b" not in err
    code, err = _run(monkeypatch, capsys, ValueError("bug\x1b[2J"), "--debug")
    assert code == ExitCode.ERROR and "ValueError: bug\\x1b[2J" in err and "\x1b" not in err


def test_an_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(monkeypatch, capsys, CommandFailed("gpu1", "docker load", 1, EVIL))
    assert code == ExitCode.ERROR
    said = "oops\\x1b]52;c;cm0gLXJmIH4K\\x07\\nforge: all good"
    assert err == f"forge: error: gpu1: `docker load` exited with status 1: {said}\n"
    code, err = _run(monkeypatch, capsys, ValueError("bug\nforge: all good"))
    assert code == ExitCode.ERROR and len(err.splitlines()) == 1 and "bug\\nforge: all good" in err

"""Quoting: argv lists become shell strings in one place, and come back intact."""

from __future__ import annotations

import subprocess

import pytest

from forge import shell

NASTY = [
    "plain",
    "with space",
    "it's",
    'double "quotes"',
    "$(touch /tmp/forge-pwned)",
    "`id`",
    "a; rm -rf /",
    "line1\nline2",
    "tab\there",
    "ünïcødé ✓ 日本",
    "*",
    "~",
    "$HOME",
    "--",
    "-n",
    "",
    "back\\slash",
    "&& ||",
    "#comment",
]


def run_sh(script: str) -> bytes:
    return subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout


def test_render_round_trips_through_a_real_shell() -> None:
    script = shell.render(["printf", "%s\\0", *NASTY])
    out = run_sh(script)
    assert out.split(b"\0")[:-1] == [a.encode() for a in NASTY]


def test_env_values_are_quoted() -> None:
    script = shell.render(["sh", "-c", 'printf %s "$X"'], env={"X": "a; echo INJECTED #"})
    assert run_sh(script) == b"a; echo INJECTED #"


def test_env_name_must_be_a_name() -> None:
    with pytest.raises(ValueError):
        shell.render(["true"], env={"A;B": "x"})


def test_string_is_not_argv() -> None:
    with pytest.raises(TypeError):
        shell.render("rm -rf /")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shell.render([])


def test_pipeline_fails_when_a_stage_fails() -> None:
    ok = shell.pipeline(["printf", "a b"], ["tr", " ", "_"])
    assert run_sh(ok) == b"a_b"
    bad = shell.pipeline(["false"], ["cat"])
    assert subprocess.run(["sh", "-c", bad]).returncode == 1


def test_script_passes_arguments_positionally() -> None:
    s = shell.script('printf "%s|" "$@"', "a b", "$(x)")
    assert run_sh(s) == b"a b|$(x)|"


def test_display_masks_secrets() -> None:
    assert shell.display(["curl", "-u", shell.Secret("pw")]) == "curl -u ***"

"""Durations as people write them, in hosts.toml and on the command line."""

from __future__ import annotations

import pytest

from forge.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("48h", 172800), ("7d", 604800), ("2w", 1209600), ("1y", 31536000), ("1h30m", 5400),
     (" 1.5h ", 5400), ("2D", 172800)],
)  # fmt: skip
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "soon", "5x", "h", "-5m", "5m junk", "1h-30m"])
def test_not_a_duration_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration \(write e\.g\. 90s, 5m"):
        parse_duration(text)


def test_format_keeps_the_two_largest_units() -> None:
    assert [format_duration(s) for s in (0, 12, 2700, 90061, 694861, 31536000 + 86400)] == [
        "0s", "12s", "45m", "1d 1h", "1w 1d", "1y 1d",
    ]  # fmt: skip


def test_the_duration_option_type_gives_seconds_or_a_usage_error() -> None:
    import click
    from click.testing import CliRunner

    from forge.cli.main import DURATION

    @click.command()
    @click.option("--since", type=DURATION, default="7d")
    def show(since: float) -> None:
        click.echo(repr(since))

    runner = CliRunner()
    assert runner.invoke(show, []).output == "604800.0\n"
    assert runner.invoke(show, ["--since", "1h30m"]).output == "5400.0\n"
    bad = runner.invoke(show, ["--since", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output

"""The check for numbers read from a host (forge/hostnum.py)."""

from __future__ import annotations

import pytest

from forge.hostnum import MAX_DIGITS, natural


@pytest.mark.parametrize(
    "text, number", [("0", 0), ("007", 7), ("65535", 65535), ("9" * MAX_DIGITS, int("9" * MAX_DIGITS))]
)
def test_plain_ascii_digits_are_read(text: str, number: int) -> None:
    assert natural(text) == number


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\u00b2",  # superscript two: str.isdigit() says yes, int() raises
        "\u0663",  # Arabic-Indic three: int() would read it
        "9" * (MAX_DIGITS + 1),
        "9" * 5000,  # int() refuses more than 4300 digits; float() reads infinity
        "-1",
        "+1",
        " 1",
        "1 ",
        "1_0",  # int() reads "10"
        "0x10",
        "1e3",
        "inf",
    ],
)
def test_anything_else_is_not_a_number(text: str) -> None:
    assert natural(text) is None


def test_the_bound_is_the_callers() -> None:
    assert natural("65536", 5) == 65536 and natural("100000", 5) is None

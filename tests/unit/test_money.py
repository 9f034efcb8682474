"""Decimal strings <-> integer micro-units, and half-up rounding."""

from __future__ import annotations

import pytest

from rating.core.money import MICRO, format_amount, parse_amount, round_half_up_div


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("0", 0),
        ("0.00", 0),
        ("12.3456", 12_345_600),
        ("12.345600", 12_345_600),
        ("-0.5", -500_000),
        ("0.000001", 1),
        ("1000000", 1_000_000 * MICRO),
        ("007.1", 7_100_000),
        ("-0", 0),
    ],
)
def test_parse_amount(text: str, micros: int) -> None:
    assert parse_amount(text) == micros


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0.0000001", "more than 6 decimals"),
        ("1e3", "not a decimal"),
        ("1E-2", "not a decimal"),
        ("NaN", "not a decimal"),
        ("inf", "not a decimal"),
        ("", "not a decimal"),
        ("1.", "not a decimal"),
        (".5", "not a decimal"),
        ("+1", "not a decimal"),
        ("1,5", "not a decimal"),
        (" 1", "not a decimal"),
        ("\u0661", "not a decimal"),  # Arabic-Indic 1: str.isdigit() would accept it
        ("--1", "not a decimal"),
    ],
)
def test_parse_amount_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_amount(text)


@pytest.mark.parametrize("value", [1.5, 0.1, 3, None])
def test_parse_amount_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="decimal string"):
        parse_amount(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.000000"),
        (12_345_600, "12.345600"),
        (-500_000, "-0.500000"),
        (1, "0.000001"),
        (-1, "-0.000001"),
        (123 * MICRO, "123.000000"),
    ],
)
def test_format_amount(micros: int, text: str) -> None:
    assert format_amount(micros) == text
    assert parse_amount(text) == micros


@pytest.mark.parametrize("value", [1.5, "1", True])
def test_format_amount_rejects_non_ints(value: object) -> None:
    with pytest.raises(TypeError):
        format_amount(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("numer", "denom", "expected"),
    [
        (0, 60, 0),
        (29, 60, 0),
        (30, 60, 1),  # exactly half rounds up
        (31, 60, 1),
        (89, 60, 1),
        (90, 60, 2),
        (-30, 60, -1),  # half away from zero
        (-29, 60, 0),
        (120, 60, 2),
        (10**30 + 30, 60, 10**30 // 60 + 1),
    ],
)
def test_round_half_up_div(numer: int, denom: int, expected: int) -> None:
    assert round_half_up_div(numer, denom) == expected


def test_round_half_up_div_rejects_floats_and_bad_denominators() -> None:
    with pytest.raises(TypeError):
        round_half_up_div(1.5, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        round_half_up_div(1, 0)

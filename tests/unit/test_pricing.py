"""The contract's exact pricing rule (§4), as tables."""

from __future__ import annotations

import pytest

from rating.core.pricing import (
    UNLIMITED_SECONDS,
    Increment,
    TimedRate,
    billable_seconds,
    charge,
    cost,
    seconds_covered,
    sms_cost,
)


def timed(rate: int, inc: str = "60/60", fee: int = 0) -> TimedRate:
    return TimedRate(rate, fee, Increment.parse(inc))


@pytest.mark.parametrize(
    ("inc", "t", "billable"),
    [
        ("60/60", 0, 0),
        ("60/60", 1, 60),
        ("60/60", 59, 60),
        ("60/60", 60, 60),  # t == a
        ("60/60", 61, 120),  # t == a + 1
        ("60/60", 120, 120),
        ("60/60", 121, 180),
        ("30/6", 1, 30),
        ("30/6", 30, 30),
        ("30/6", 31, 36),
        ("30/6", 36, 36),
        ("30/6", 37, 42),
        ("1/1", 1, 1),
        ("1/1", 77, 77),
        ("60/1", 61, 61),
        ("6/6", 7, 12),
        ("60/60", 60 * 10**10 + 1, 60 * 10**10 + 60),
    ],
)
def test_billable_seconds(inc: str, t: int, billable: int) -> None:
    assert billable_seconds(t, Increment.parse(inc)) == billable


@pytest.mark.parametrize(
    ("rate", "inc", "fee", "t", "expected"),
    [
        (12_000, "60/60", 0, 0, 0),
        (12_000, "60/60", 0, 1, 12_000),
        (12_000, "60/60", 0, 60, 12_000),
        (12_000, "60/60", 0, 61, 24_000),
        (12_000, "60/60", 50_000, 0, 0),  # no connect fee for nothing
        (12_000, "60/60", 50_000, 1, 62_000),
        (12_000, "30/6", 0, 31, 7_200),
        (1, "1/1", 0, 29, 0),  # 0.483 micro rounds down
        (1, "1/1", 0, 30, 1),  # exactly half rounds up
        (1, "1/1", 0, 90, 2),
        (7, "1/1", 0, 1, 0),  # 0.1167
        (30, "1/1", 0, 1, 1),  # 0.5
        (12_000, "60/60", 0, 60 * 10**10, 12 * 10**13),
        (1_990_000, "60/60", 250_000, 61, 4_230_000),
    ],
)
def test_cost(rate: int, inc: str, fee: int, t: int, expected: int) -> None:
    assert cost(t, timed(rate, inc, fee)) == expected


@pytest.mark.parametrize(
    ("from_s", "to_s", "expected"),
    [
        (0, 1, 62_000),  # connect fee lands on the first interval
        (0, 60, 62_000),
        (1, 60, 0),  # same billing block
        (60, 61, 12_000),
        (60, 120, 12_000),
        (0, 121, 86_000),
        (5, 5, 0),
    ],
)
def test_charge(from_s: int, to_s: int, expected: int) -> None:
    assert charge(from_s, to_s, timed(12_000, "60/60", 50_000)) == expected


def test_charge_rejects_reversed_or_negative_intervals() -> None:
    with pytest.raises(ValueError):
        charge(10, 5, timed(1))
    with pytest.raises(ValueError):
        charge(-1, 5, timed(1))


@pytest.mark.parametrize(
    ("rate", "segments", "expected"), [(65_000, 1, 65_000), (65_000, 3, 195_000), (1, 0, 0)]
)
def test_sms_cost(rate: int, segments: int, expected: int) -> None:
    assert sms_cost(rate, segments) == expected


@pytest.mark.parametrize(
    ("rate", "inc", "fee", "budget", "expected"),
    [
        (12_000, "60/60", 0, 12_000, 60),
        (12_000, "60/60", 0, 11_999, 0),  # first block not affordable
        (12_000, "60/60", 0, 23_999, 60),
        (12_000, "60/60", 0, 24_000, 120),
        (12_000, "60/60", 50_000, 49_999, 0),  # connect fee not affordable
        (12_000, "60/60", 50_000, 61_999, 0),
        (12_000, "60/60", 50_000, 62_000, 60),
        (12_000, "30/6", 0, 7_200, 36),
        (12_000, "30/6", 0, 7_199, 30),
        (1, "1/1", 0, 0, 29),  # rounding: 29 s of 1 micro/min still cost 0
        (1, "1/1", 0, 1, 89),
        (12_000, "60/60", 0, -5, 0),
        (12_000, "60/60", 0, 12_000 * 10**15, 60 * 10**15),
        (0, "60/60", 0, 0, UNLIMITED_SECONDS),
        (0, "60/60", 10, 9, 0),
    ],
)
def test_seconds_covered(rate: int, inc: str, fee: int, budget: int, expected: int) -> None:
    tariff = timed(rate, inc, fee)
    covered = seconds_covered(budget, tariff)
    assert covered == expected
    if 0 < covered < UNLIMITED_SECONDS:
        assert cost(covered, tariff) <= budget < cost(covered + 1, tariff)


@pytest.mark.parametrize("text", ["60", "60/", "/60", "0/60", "60/0", "a/b", "-1/1", "1.5/1", ""])
def test_increment_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Increment.parse(text)


def test_timed_rate_rejects_negative_and_float_prices() -> None:
    with pytest.raises(ValueError):
        TimedRate(-1, 0, Increment(1, 1))
    with pytest.raises(ValueError):
        TimedRate(1, -1, Increment(1, 1))
    with pytest.raises(ValueError):
        TimedRate(0.5, 0, Increment(1, 1))  # type: ignore[arg-type]

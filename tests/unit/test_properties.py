"""Invariants of pricing and money, checked by Hypothesis."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.core.money import format_amount, parse_amount, round_half_up_div
from rating.core.pricing import Increment, TimedRate, charge, cost, seconds_covered
from rating.core.segments import count_segments

rates = st.builds(
    TimedRate,
    rate_per_minute=st.integers(0, 10_000_000),
    connect_fee=st.integers(0, 1_000_000),
    increment=st.builds(Increment, first=st.integers(1, 120), step=st.integers(1, 120)),
)


@given(rates, st.lists(st.integers(1, 10_000), min_size=1, max_size=30), st.randoms())
def test_any_split_in_any_order_sums_to_total(
    rate: TimedRate, lengths: list[int], rnd: random.Random
) -> None:
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    intervals = list(itertools.pairwise(bounds))
    rnd.shuffle(intervals)
    charges = [charge(a, b, rate) for a, b in intervals]
    assert all(amount >= 0 for amount in charges)
    assert sum(charges) == cost(bounds[-1], rate)


@given(rates, st.integers(0, 10**7), st.integers(0, 10**7))
def test_cost_is_monotonic(rate: TimedRate, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert 0 <= cost(low, rate) <= cost(high, rate)


@given(rates, st.integers(-10, 10**9))
def test_seconds_covered_is_maximal(rate: TimedRate, budget: int) -> None:
    covered = seconds_covered(budget, rate)
    if covered == 0:
        # Not even the first block (and the connect fee) is affordable.
        assert budget < 0 or cost(1, rate) > budget
        return
    assert cost(covered, rate) <= budget
    if rate.rate_per_minute > 0:
        assert cost(covered + 1, rate) > budget


@given(st.integers(-(10**15), 10**15))
def test_format_parse_round_trip(micros: int) -> None:
    text = format_amount(micros)
    assert parse_amount(text) == micros
    assert len(text.split(".")[1]) == 6


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_money_functions_reject_floats(value: float) -> None:
    with pytest.raises(ValueError):
        parse_amount(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_amount(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        round_half_up_div(value, 60)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        round_half_up_div(60, value)  # type: ignore[arg-type]


@given(st.integers(-(10**12), 10**12), st.integers(1, 10**6))
def test_round_half_up_div_is_nearest(numer: int, denom: int) -> None:
    rounded = round_half_up_div(numer, denom)
    # |numer/denom - rounded| <= 1/2, with ties going away from zero.
    assert abs(2 * (numer - rounded * denom)) <= denom
    if abs(2 * (numer - rounded * denom)) == denom:
        assert abs(rounded * denom) > abs(numer)


@given(st.text(max_size=600))
def test_segments_are_at_least_one_and_grow_with_text(text: str) -> None:
    segments = count_segments(text)
    assert segments >= 1
    assert count_segments(text + text) >= segments

"""The grant rule of reservations (rating.core.reservations), pure: bounds, whole
increments, never more than the available credit, and a table of worked cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.core.pricing import Increment, TimedRate, billable_seconds, cost
from rating.core.reservations import grant_total, hold

PER_MINUTE = TimedRate(100_000, 0, Increment(60, 60))  # 0.10 a minute, 60/60
MOBILE = TimedRate(300_000, 50_000, Increment(30, 6))  # 0.30, 0.05 connect, 30/6


@pytest.mark.parametrize(("available", "granted", "used", "cap", "rate", "expected"), [
    (10_000_000, 0, 0, 300, PER_MINUTE, 300),        # the cap
    (250_000, 0, 0, 300, PER_MINUTE, 120),           # two whole minutes, 0.05 left over
    (99_999, 0, 0, 300, PER_MINUTE, 0),              # not even the first block
    (10_000_000, 0, 0, 90, PER_MINUTE, 60),          # whole increments within the cap
    (10_000_000, 0, 0, 45, PER_MINUTE, 45),          # no boundary within it: the cap, 60 held
    (10_000_000, 45, 0, 45, PER_MINUTE, 60),         # ... then the next boundary
    (10_000_000, 0, 0, 300, TimedRate(60_000, 0, Increment(90, 60)), 270),  # 90 + 3 * 60
    (10_000_000, 0, 0, 300, TimedRate(15_000, 0, Increment(7, 7)), 294),
    (1_550_000, 0, 0, 300, MOBILE, 300),             # 0.05 + 0.30 * 300 / 60
    (1_549_999, 0, 0, 300, MOBILE, 294),
    (200_000, 0, 0, 300, MOBILE, 30),                # the first block is 0.20, 6 s more 0.03
    (0, 300, 0, 300, PER_MINUTE, 300),               # nothing more to hold: nothing more
    (250_000, 300, 0, 300, PER_MINUTE, 420),         # extension: 0.25 more is 150 s, whole: 120
    (0, 300, 700_000, 300, PER_MINUTE, 420),         # used past the grant: its block is paid
    (-1, 300, 0, 300, PER_MINUTE, 300),              # in debt: nothing
    (5, 0, 0, 300, TimedRate(0, 0, Increment(1, 1)), 300),  # free: the cap
])
def test_worked_cases(available: int, granted: int, used: int, cap: int, rate: TimedRate,
                      expected: int) -> None:
    assert grant_total(available=available, granted=granted, used=used, cap=cap,
                       rate=rate) == expected


rates = st.builds(TimedRate, st.integers(0, 10**8), st.integers(0, 10**7),
                  st.builds(Increment, st.integers(1, 600), st.integers(1, 600)))


@given(available=st.integers(-10**9, 10**13), granted=st.integers(0, 10**5),
       used=st.integers(0, 10**10), cap=st.integers(1, 3600), rate=rates)
def test_a_grant_never_holds_more_than_the_available_credit(
        available: int, granted: int, used: int, cap: int, rate: TimedRate) -> None:
    total = grant_total(available=available, granted=granted, used=used, cap=cap, rate=rate)
    assert granted <= total <= granted + cap
    if total > granted:
        assert available >= 0
        assert hold(total, used, rate) - hold(granted, used, rate) <= available
        # Whole increments: the total is a boundary, unless the cap ends inside the
        # increment after ``granted`` (then the cap itself).
        boundary = billable_seconds(total, rate.increment) == total
        assert boundary or (total == granted + cap
                            and billable_seconds(granted + 1, rate.increment) > total)
        # and it is the most that fits: the next boundary is past the cap, or the credit
        more = billable_seconds(total + 1, rate.increment)
        assert (more > granted + cap
                or hold(more, used, rate) - hold(granted, used, rate) > available)


@given(available=st.integers(0, 10**12), cap=st.integers(1, 3600), rate=rates)
def test_a_first_grant_is_refused_only_when_the_first_block_does_not_fit(
        available: int, cap: int, rate: TimedRate) -> None:
    total = grant_total(available=available, granted=0, used=0, cap=cap, rate=rate)
    assert (total == 0) == (cost(1, rate) > available)

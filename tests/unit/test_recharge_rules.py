"""The pure parts of automatic recharge's limits and alerts: notification-threshold
crossings, the retry waits setting, the runway figure, hard declines of the simulated
provider and the balance-event schema of CONTRACT §12."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.core.money import BALANCE_BOUND, parse_amount
from rating.core.thresholds import MAX_ALERT_THRESHOLDS, alert_crossings, alert_thresholds
from rating.payments.provider import ChargeRequest
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings, SettingsError
from rating.stores.recharge_settings import runway_days
from tests.unit.test_schemas import BALANCE, validator

EUR = parse_amount
ALERTS = (EUR("50"), EUR("10"))


@pytest.mark.parametrize(("before", "after", "crossed"), [
    ("60", "55", []),
    ("60", "50", []),                 # at the threshold is not below it
    ("50", "49.999999", ["50"]),      # from at-or-above to below
    ("60", "40", ["50"]),
    ("60", "5", ["50", "10"]),        # one change crossing both: highest first
    ("40", "5", ["10"]),              # 50 was crossed before: not again
    ("5", "1", []),                   # staying below announces nothing more
    ("5", "60", []),                  # rising crosses nothing downwards
    ("10", "-3", ["10"]),
])
def test_alert_crossings(before: str, after: str, crossed: list[str]) -> None:
    assert alert_crossings(EUR(before), EUR(after), ALERTS) == [EUR(c) for c in crossed]


@given(st.lists(st.integers(-100, 100), min_size=2, max_size=12),
       st.lists(st.integers(0, 100), max_size=4))
def test_a_walk_announces_each_threshold_once_per_crossing(
        walk: list[int], thresholds: list[int]) -> None:
    """Every fall below a threshold is announced, and a threshold is announced again only
    after the balance has been back at or above it."""
    for threshold in set(thresholds):
        last: int | None = None  # index in walk of the balance after the last announcement
        for i, (before, after) in enumerate(pairwise(walk), start=1):
            announced = threshold in alert_crossings(before, after, thresholds)
            assert announced == (before >= threshold > after)
            if announced:
                assert last is None or any(b >= threshold for b in walk[last:i])
                last = i


def test_alert_thresholds_are_kept_distinct_and_highest_first() -> None:
    assert alert_thresholds([EUR("10"), EUR("50"), EUR("10")]) == (EUR("50"), EUR("10"))
    assert alert_thresholds([]) == ()
    with pytest.raises(ValueError, match="at most"):
        alert_thresholds(range(MAX_ALERT_THRESHOLDS + 1))
    for bad in ([-1], [BALANCE_BOUND + 1]):
        with pytest.raises(ValueError):
            alert_thresholds(bad)


def test_retry_waits_are_read_from_the_environment() -> None:
    assert Settings().recharge_retry_seconds == (60.0, 300.0, 1800.0)
    settings = Settings.from_env({"RATING_RECHARGE_RETRY_SECONDS": "1, 2.5,0",
                                  "RATING_RECHARGE_SWEEP_SECONDS": "0.5"})
    assert settings.recharge_retry_seconds == (1.0, 2.5, 0.0)
    assert settings.recharge_sweep_seconds == 0.5


@pytest.mark.parametrize(("name", "value"), [
    ("RATING_RECHARGE_RETRY_SECONDS", "soon"),
    ("RATING_RECHARGE_RETRY_SECONDS", "60,,300"),
    ("RATING_RECHARGE_RETRY_SECONDS", "60,-5"),
    ("RATING_RECHARGE_RETRY_SECONDS", "1e3"),
    ("RATING_RECHARGE_RETRY_SECONDS", "nan"),
    ("RATING_RECHARGE_RETRY_SECONDS", "999999999"),
    ("RATING_RECHARGE_RETRY_SECONDS", ",".join(["1"] * 11)),
    ("RATING_RECHARGE_SWEEP_SECONDS", "0"),
    ("RATING_RECHARGE_SWEEP_SECONDS", "often"),
])
def test_a_bad_recharge_setting_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    assert repr(value) in message


def test_runway_is_days_at_the_average_daily_spend() -> None:
    assert runway_days(EUR("10"), 0) is None           # nothing spent: no figure
    assert runway_days(EUR("10"), EUR("7")) == 10.0     # 1.00 a day
    assert runway_days(EUR("10"), EUR("21")) == 3.3     # 3.33..., rounded down
    assert runway_days(EUR("-2"), EUR("7")) == 0.0
    assert runway_days(0, EUR("7")) == 0.0


async def test_the_simulated_provider_declines_hard_and_per_account() -> None:
    provider = SimulatedProvider("decline")
    provider.set_behaviour("hard_decline", account_id="stolen")
    soft = await provider.charge(ChargeRequest("a", 5, "EUR", "k1"))
    hard = await provider.charge(ChargeRequest("stolen", 5, "EUR", "k2"))
    assert (soft.status, soft.hard, soft.reason) == ("declined", False, "card_declined")
    assert (hard.status, hard.hard, hard.reason) == ("declined", True, "card_closed")
    assert await provider.charge(ChargeRequest("stolen", 5, "EUR", "k2")) == hard
    assert provider.captured() == []
    assert SimulatedProvider.from_spec("hard_decline") is not None
    assert (await SimulatedProvider().charge(ChargeRequest("a", 5, "EUR", "k"))).hard is False


def _event(type_: str, **data: object) -> dict[str, object]:
    return {**BALANCE, "type": type_, "data": {**BALANCE["data"], **data}}  # type: ignore[dict-item]


@pytest.mark.parametrize(("event", "valid"), [
    (_event("recharge.requested", attempt=1, amount="20.000000"), True),
    (_event("recharge.failed", attempt=2, amount="20.000000", reason="card_declined"), True),
    (_event("recharge.requested", amount="20.000000"), False),  # no attempt
    (_event("recharge.requested", attempt=1), False),  # no amount
    (_event("recharge.requested", attempt="1", amount="20.000000"), False),
    (_event("recharge.requested", attempt=0, amount="20.000000"), False),
    (_event("recharge.requested", attempt=1, amount="20"), False),
    (_event("recharge.limited", attempt=1, amount="20.000000", max_per_day=5), True),
    (_event("recharge.disabled", attempt=4, amount="20.000000",
            reason="attempts_exhausted"), True),
    (_event("recharge.disabled", attempt=1, amount="20.000000", reason="hard_decline"), True),
    (_event("recharge.disabled", attempt=1, amount="20.000000"), False),  # no reason
    (_event("recharge.disabled", attempt=1, amount="20.000000", reason="bored"), False),
    (_event("balance.alert", threshold="50.000000"), True),
    (_event("balance.alert", threshold=None), False),
    (_event("balance.low"), True),  # the others need neither attempt nor amount
])
def test_balance_events_of_section_12(event: dict[str, object], valid: bool) -> None:
    assert validator("balance.event").is_valid(event) is valid

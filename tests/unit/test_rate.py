"""Rating each service against an in-memory book, as tables."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from rating.core.errors import ChargeTooLarge, NoRate, UnknownPlan
from rating.core.events import CallUsage, SmsUsage, SttUsage, TollFreeUsage, UsageEvent
from rating.core.pricing import Increment, TimedRate, cost
from rating.core.rate import MAX_CHARGE, Charge, call_rate_for, rate
from rating.core.tariff import CallDeck, PlanVersion, SmsDeck, TariffBook, TollFreeDeck

PER_MINUTE = Increment(60, 60)
FR = TimedRate(10_000, 0, PER_MINUTE)
FR_MOBILE = TimedRate(30_000, 50_000, Increment(30, 6))  # own connect fee and increment
FR_MOBILE_612 = TimedRate(20_000, 0, PER_MINUTE)
GB = TimedRate(12_000, 0, PER_MINUTE)
CA = TimedRate(9_000, 0, Increment(6, 6))
DE_MOBILE = TimedRate(40_000, 0, PER_MINUTE)
STT = TimedRate(24_000, 0, Increment(15, 15))
V1 = datetime(2026, 1, 1, tzinfo=UTC)
V2 = datetime(2027, 1, 1, tzinfo=UTC)
IN_V1 = datetime(2026, 11, 25, 10, tzinfo=UTC)


def make_book() -> TariffBook:
    call = CallDeck(
        by_country={"FR": FR, "GB": GB, "CA": CA},
        by_prefix={
            "336": ("FR", FR_MOBILE),
            "33612": ("FR", FR_MOBILE_612),
            "4915": ("DE", DE_MOBILE),
        },
    )
    tollfree = TollFreeDeck(
        {
            ("US", "inbound"): TimedRate(15_000, 0, PER_MINUTE),
            ("US", "outbound"): TimedRate(9_000, 0, PER_MINUTE),
        }
    )
    sms = SmsDeck({"FR": 65_000, "GB": 40_000})
    v1 = PlanVersion("standard", "EUR", V1, call, tollfree, sms, STT)
    v2_call = CallDeck(by_country={"FR": TimedRate(11_000, 0, PER_MINUTE)}, by_prefix={})
    v2 = PlanVersion("standard", "EUR", V2, v2_call, tollfree, sms, STT)
    bare = PlanVersion("bare", "USD", V1)
    return TariffBook([v2, v1, bare])


BOOK = make_book()


def call(
    destination: str, from_s: int = 0, to_s: int = 60, at: datetime | None = IN_V1
) -> CallUsage:
    return CallUsage("e-1", "sw-1", "acct-42", at, "c-1", destination, from_s, to_s)


def sms(destination: str, segments: int = 1) -> SmsUsage:
    return SmsUsage("e-2", "sw-1", "acct-42", IN_V1, "m-1", destination, segments)


def tollfree(direction: str = "inbound", to_s: int = 61) -> TollFreeUsage:
    return TollFreeUsage(
        "e-3",
        "sw-1",
        "acct-42",
        IN_V1,
        "c-2",
        "+18005550100",
        direction,  # type: ignore[arg-type]
        0,
        to_s,
    )


def stt(seconds: int) -> SttUsage:
    return SttUsage("e-4", "sw-1", "acct-42", IN_V1, "j-1", seconds)


@pytest.mark.parametrize(
    ("event", "country", "amount"),
    [
        (call("+33123456789"), "FR", 10_000),  # country row
        (call("+33123456789", 0, 61), "FR", 20_000),
        (call("+33698765432"), "FR", 50_000 + 30_000),  # prefix 336: own fee, 30/6
        (call("+33698765432", 0, 31), "FR", 50_000 + 18_000),
        (call("+33698765432", 31, 60), "FR", 12_000),
        (call("+33612345678"), "FR", 20_000),  # longer prefix 33612 beats 336
        (call("+4915112345678"), "DE", 40_000),  # prefix without a DE country row
        (call("+447700900123"), "GB", 12_000),
        (call("+14165550123", 0, 7), "CA", 1_800),  # +1 resolved to Canada, 6/6
        (sms("+33612345678", 3), "FR", 195_000),
        (sms("+442071234567"), "GB", 40_000),
        (tollfree("inbound"), "US", 30_000),
        (tollfree("outbound"), "US", 18_000),
        (stt(95), None, 42_000),  # 95 s -> 105 s billed at 0.024/min
        (stt(1), None, 6_000),
    ],
)
def test_rate(event: UsageEvent, country: str | None, amount: int) -> None:
    charged = rate(event, BOOK, "standard")
    # The rated detail is checked in test_detail.py; here, the money.
    assert charged.detail is not None
    assert replace(charged, detail=None) == Charge(
        event.event_id, "sw-1", "acct-42", event.service, country, amount, "EUR", "standard"
    )


@pytest.mark.parametrize(
    "event",
    [
        call("+33123456789", 0, 2**63 - 1),  # the largest integer a switch can send
        tollfree("inbound", to_s=2**62),
        sms("+442071234567", 2**62),
        stt(10**17),
    ],
)
def test_an_absurd_charge_is_refused_not_billed(event: UsageEvent) -> None:
    with pytest.raises(ChargeTooLarge) as caught:
        rate(event, BOOK, "standard")
    assert caught.value.code == "charge_too_large"


def test_a_charge_just_under_the_limit_is_billed() -> None:
    # 0.024/min STT: 2.4 * 10^11 s is 4 * 10^9 min, 0.96 * 10^14 micro-units.
    amount = rate(stt(240_000_000_000), BOOK, "standard").amount
    assert 0.95 * MAX_CHARGE < amount <= MAX_CHARGE


@pytest.mark.parametrize(
    "event",
    [
        call("+4930123456"),  # DE has prefix rows only; this is no mobile
        call("+12125550123"),  # US, but only CA has a row
        call("+99912345"),  # no such calling code
        call("+80012345678"),  # non-geographic
        sms("+4915112345678"),
        TollFreeUsage("e", "s", "a", IN_V1, "c", "+448000123456", "inbound", 0, 1),
    ],
)
def test_no_rate(event: UsageEvent) -> None:
    with pytest.raises(NoRate) as caught:
        rate(event, BOOK, "standard")
    assert caught.value.code == "no_rate"


@pytest.mark.parametrize("event", [call("+33123456789"), sms("+33612345678"), tollfree(), stt(5)])
def test_plan_without_the_service_is_no_rate(event: UsageEvent) -> None:
    with pytest.raises(NoRate):
        rate(event, BOOK, "bare")


def test_a_call_split_into_events_sums_to_its_total() -> None:
    bounds = [0, 1, 30, 31, 60, 61, 95, 200]
    parts = [
        rate(call("+33698765432", a, b), BOOK, "standard").amount
        for a, b in itertools.pairwise(bounds)
    ]
    assert sum(parts) == cost(200, FR_MOBILE)


@pytest.mark.parametrize(
    ("at", "amount"),
    [
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), 10_000),
        (V2, 11_000),  # a version is in force from its first instant
        (datetime(2030, 1, 1, tzinfo=UTC), 11_000),
    ],
)
def test_plan_version_by_event_time(at: datetime, amount: int) -> None:
    assert rate(call("+33123456789", at=at), BOOK, "standard").amount == amount


def test_unknown_plan_and_no_version_yet() -> None:
    with pytest.raises(UnknownPlan) as unknown:
        rate(call("+33123456789"), BOOK, "gold")
    assert unknown.value.code == "unknown_plan"
    with pytest.raises(UnknownPlan, match="no version in force"):
        rate(call("+33123456789", at=datetime(2025, 12, 31, tzinfo=UTC)), BOOK, "standard")


def test_event_without_time_uses_now() -> None:
    old = PlanVersion("p", "EUR", datetime(2000, 1, 1, tzinfo=UTC), sms=SmsDeck({"FR": 1}))
    future = PlanVersion("p", "EUR", datetime(2999, 1, 1, tzinfo=UTC), sms=SmsDeck({"FR": 2}))
    book = TariffBook([old, future])
    event = SmsUsage("e", "s", "a", None, "m", "+33612345678", 1)
    assert rate(event, book, "p").amount == 1


def test_call_rate_for() -> None:
    assert call_rate_for(BOOK, "standard", "+33612345678", IN_V1) == FR_MOBILE_612
    assert call_rate_for(BOOK, "standard", "+33123456789", V2) == TimedRate(11_000, 0, PER_MINUTE)
    with pytest.raises(NoRate):
        call_rate_for(BOOK, "standard", "+4930123456", IN_V1)
    with pytest.raises(NoRate):
        call_rate_for(BOOK, "bare", "+4930123456", IN_V1)


def test_book_accessors() -> None:
    assert BOOK.plan_ids() == ["bare", "standard"]
    assert BOOK.currency("bare") == "USD"
    with pytest.raises(UnknownPlan):
        BOOK.currency("gold")
    with pytest.raises(ValueError):
        TariffBook([PlanVersion("x", "EUR", V1), PlanVersion("x", "EUR", V1)])


def test_a_number_is_priced_by_its_own_countrys_rows_never_a_neighbours() -> None:
    """CONTRACT §4: the country comes from the number; countries sharing a calling code
    (+44 GB and Jersey, +1 the US and Canada, +7 Russia and Kazakhstan) keep their rows."""
    gb, gb_mobile, je = (TimedRate(r, 0, PER_MINUTE) for r in (12_000, 35_000, 50_000))
    deck = CallDeck(by_country={"GB": gb, "JE": je, "US": TimedRate(9_000, 0, PER_MINUTE)},
                    by_prefix={"447": ("GB", gb_mobile), "1212": ("CA", CA),
                               "77": ("RU", TimedRate(90_000, 0, PER_MINUTE))})
    assert deck.match("+447700900123") == ("GB", "447", gb_mobile)  # a GB mobile
    assert deck.match("+447700312345") == ("JE", None, je)  # Jersey: not GB's 447 row
    assert deck.match("+12125551234")[:2] == ("US", None)  # New York: not "CA,1212"
    with pytest.raises(NoRate, match=r"\(country KZ\)"):
        deck.match("+77012345678")  # Kazakhstan has no row: not RU's 77, not guessed
    without_je = CallDeck(by_country={"GB": gb}, by_prefix={"447": ("GB", gb_mobile)})
    with pytest.raises(NoRate, match=r"\(country JE\)"):
        without_je.match("+447700312345")

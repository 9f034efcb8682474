"""The rated detail of a charge: what priced it, enough to price it again (CONTRACT §13)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.core.detail import RatedDetail, detail_json
from rating.core.errors import ChargeTooLarge
from rating.core.events import CallUsage, SmsUsage, SttUsage, TollFreeUsage, UsageEvent
from rating.core.money import format_amount
from rating.core.pricing import Increment, TimedRate
from rating.core.rate import rate
from rating.core.tariff import CallDeck, PlanVersion, SmsDeck, TariffBook
from tests.pricing_rule import billed_seconds, reprice
from tests.unit.test_rate import BOOK, V1, call, sms, stt, tollfree

V2_TIME = datetime(2027, 3, 1, tzinfo=UTC)


def detail_of(event: UsageEvent) -> dict[str, Any]:
    """The detail of the event's charge as readers see it."""
    charged = rate(event, BOOK, "standard")
    assert charged.detail is not None
    return detail_json(charged.service, charged.country, charged.detail)


def test_a_call_priced_by_a_prefix_row_names_the_prefix_and_its_own_fee_and_increment() -> None:
    assert detail_of(call("+33698765432", 0, 31)) == {
        "destination": "+33698765432", "call_id": "c-1", "from_s": 0, "to_s": 31,
        "billed_seconds": 36, "rate": "0.030000", "connect_fee": "0.050000",
        "increment": "30/6", "prefix": "336", "country": "FR",
        "effective_from": "2026-01-01T00:00:00Z"}


def test_a_call_priced_by_the_country_row_has_no_prefix() -> None:
    detail = detail_of(call("+33123456789", 60, 61))
    assert (detail["prefix"], detail["country"]) == (None, "FR")
    assert (detail["from_s"], detail["to_s"], detail["billed_seconds"]) == (60, 61, 60)
    assert (detail["rate"], detail["connect_fee"], detail["increment"]) == (
        "0.010000", "0.000000", "60/60")


def test_the_longest_prefix_is_the_one_named() -> None:
    assert detail_of(call("+33612345678"))["prefix"] == "33612"
    assert detail_of(call("+4915112345678"))["country"] == "DE"


def test_the_plan_version_in_force_at_the_event_is_named() -> None:
    detail = detail_of(call("+33123456789", at=V2_TIME))
    assert (detail["effective_from"], detail["rate"]) == ("2027-01-01T00:00:00Z", "0.011000")


def test_tollfree_sms_and_stt_details() -> None:
    assert detail_of(tollfree("outbound", to_s=61)) == {
        "tollfree_number": "+18005550100", "direction": "outbound", "call_id": "c-2",
        "from_s": 0, "to_s": 61, "billed_seconds": 120, "rate": "0.009000",
        "connect_fee": "0.000000", "increment": "60/60", "country": "US",
        "effective_from": "2026-01-01T00:00:00Z"}
    assert detail_of(sms("+33612345678", 3)) == {
        "destination": "+33612345678", "message_id": "m-1", "segments": 3,
        "rate": "0.065000", "country": "FR", "effective_from": "2026-01-01T00:00:00Z"}
    assert detail_of(stt(95)) == {
        "job_id": "j-1", "seconds": 95, "billed_seconds": 105, "rate": "0.024000",
        "connect_fee": "0.000000", "increment": "15/15",
        "effective_from": "2026-01-01T00:00:00Z"}


CALL_NUMBERS = ("+33123456789", "+33698765432", "+33612345678", "+4915112345678",
                "+447700900123", "+14165550123")
intervals = st.tuples(st.integers(0, 20_000), st.integers(1, 20_000)).map(
    lambda pair: (pair[0], pair[0] + pair[1]))
events = st.one_of(
    st.builds(lambda n, i: CallUsage("e", "s", "a", None, "c", n, *i),
              st.sampled_from(CALL_NUMBERS), intervals),
    st.builds(lambda d, i: TollFreeUsage("e", "s", "a", None, "c", "+18005550100", d, *i),
              st.sampled_from(("inbound", "outbound")), intervals),
    st.builds(lambda n, k: SmsUsage("e", "s", "a", None, "m", n, k),
              st.sampled_from(("+33612345678", "+442071234567")), st.integers(1, 50)),
    st.builds(lambda k: SttUsage("e", "s", "a", None, "j", k), st.integers(1, 100_000)),
)


@given(events, st.sampled_from((None, V2_TIME)))
def test_every_detail_prices_back_to_its_amount(event: UsageEvent, at: datetime | None) -> None:
    if at is not None and isinstance(event, CallUsage):
        event = CallUsage("e", "s", "a", at, "c", "+33123456789", event.from_s, event.to_s)
    charged = rate(event, BOOK, "standard")
    assert charged.detail is not None
    detail = detail_json(charged.service, charged.country, charged.detail)
    assert reprice(charged.service, detail) == Decimal(format_amount(charged.amount))
    if charged.service != "sms":
        assert detail["billed_seconds"] == billed_seconds(charged.service, detail)


def test_the_stored_form_is_plain_values_in_micro_units() -> None:
    charged = rate(call("+33698765432", 31, 60), BOOK, "standard")
    assert charged.detail == RatedDetail(
        "+33698765432", "c-1", None, 31, 60, 24, 30_000, 50_000, "30/6", "336", V1)
    stt_detail = rate(stt(95), BOOK, "standard").detail
    assert stt_detail is not None and (stt_detail.from_s, stt_detail.to_s) == (0, 95)
    sms_detail = rate(sms("+442071234567", 2), BOOK, "standard").detail
    assert sms_detail is not None
    assert (sms_detail.quantity, sms_detail.rate, sms_detail.connect_fee) == (2, 40_000, None)


FREE = TimedRate(0, 0, Increment(60, 60))


@pytest.mark.parametrize("event", [
    CallUsage("e", "s", "a", None, "c", "+33123456789", 0, 2**64 - 1),
    CallUsage("e", "s", "a", None, "c", "+33123456789", 2**63 - 1, 2**63),
    SmsUsage("e", "s", "a", None, "m", "+33612345678", 2**63),
    SttUsage("e", "s", "a", None, "j", 2**63 - 1),  # billed rounds up past the bigint
])
def test_free_usage_too_large_to_record_is_refused(event: UsageEvent) -> None:
    # At a zero rate no price limit applies; the ledger's bigint columns still do.
    book = TariffBook([PlanVersion("free", "EUR", V1, CallDeck({"FR": FREE}, {}), None,
                                   SmsDeck({"FR": 0}), FREE)])
    with pytest.raises(ChargeTooLarge):
        rate(event, book, "free")
    fits = CallUsage("e", "s", "a", None, "c", "+33123456789", 0, 2**62)
    assert rate(fits, book, "free").amount == 0

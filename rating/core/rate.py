"""Rating: one usage event and the plan's tariffs in, one ``Charge`` out (pure)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from rating.core.detail import RatedDetail
from rating.core.errors import ChargeTooLarge, NoRate
from rating.core.events import CallUsage, Service, SmsUsage, TollFreeUsage, UsageEvent
from rating.core.pricing import TimedRate, sms_cost, timed_charge
from rating.core.tariff import PlanVersion, TariffBook


@dataclass(frozen=True, slots=True)
class Charge:
    """What one event costs; ``amount`` in micro-units of ``currency``, never negative.

    ``detail`` says what priced it (rating.core.detail), stored with the ledger row.
    """

    event_id: str
    source: str
    account_id: str
    service: Service
    country: str | None
    amount: int
    currency: str
    plan_id: str
    detail: RatedDetail | None = None


# A frozen dataclass's __init__ pays a generic object.__setattr__ per field; at
# 300 000 charges a second that is a third of rating. The hot path fills the
# slots through their descriptors instead (same object, still frozen after).
_new = object.__new__
(
    _set_event_id,
    _set_source,
    _set_account_id,
    _set_service,
    _set_country,
    _set_amount,
    _set_currency,
    _set_plan_id,
    _set_detail,
) = (Charge.__dict__[field.name].__set__ for field in fields(Charge))


# RatedDetail(...) goes through a Python-level __new__; the tuple's own is the same
# object for a third of the cost (fields in RatedDetail's order).
_tuple_new = tuple.__new__


def _new_charge(
    event_id: str,
    source: str,
    account_id: str,
    service: Service,
    country: str | None,
    amount: int,
    currency: str,
    plan_id: str,
    detail: RatedDetail,
) -> Charge:
    charge_ = _new(Charge)
    _set_event_id(charge_, event_id)
    _set_source(charge_, source)
    _set_account_id(charge_, account_id)
    _set_service(charge_, service)
    _set_country(charge_, country)
    _set_amount(charge_, amount)
    _set_currency(charge_, currency)
    _set_plan_id(charge_, plan_id)
    _set_detail(charge_, detail)
    return charge_


# One event may cost at most 100 000 000 units of its currency: far above any real
# call, message or transcription, and low enough that the sum of a batch of up to
# MAX_BATCH_EVENTS events fits the bigint the debit statement adds up in.
MAX_CHARGE = 10**14
MAX_BATCH_EVENTS = (2**63 - 1) // MAX_CHARGE  # 92 233
# The largest duration (to_s, billed seconds) or SMS segment count a charge records:
# the ledger keeps them as bigint (a switch may send integers up to 2**64 - 1).
MAX_RECORDED = 2**63 - 1


def _no_service(version: PlanVersion, service: str) -> NoRate:
    return NoRate(f"plan {version.plan_id!r} does not price {service}")


def priced_at(event: UsageEvent, at: datetime | None = None) -> datetime | None:
    """When the price of ``event`` is taken: a call's ``started_at`` (the whole call at
    the prices it started with), else the event's ``time``, else ``at`` (the Kafka
    record's timestamp, for an event without ``time``); None means now."""
    if isinstance(event, (CallUsage, TollFreeUsage)) and event.started_at is not None:
        return event.started_at
    return event.time if event.time is not None else at


def rate(event: UsageEvent, book: TariffBook, plan_id: str,
         at: datetime | None = None) -> Charge:
    """Price ``event`` with the version of ``plan_id`` in force at ``priced_at(event, at)``.

    Raises ``UnknownPlan``, ``NoRate`` or ``ChargeTooLarge`` (all permanent: the
    event goes to the DLQ).
    """
    version = book.plan(plan_id, priced_at(event, at))
    country: str | None
    detail: RatedDetail
    # Most frequent service first; isinstance keeps mypy's narrowing.
    if isinstance(event, CallUsage):
        if version.call is None:
            raise _no_service(version, "calls")
        country, prefix, timed = version.call.match(event.destination)
        amount, billed = timed_charge(event.from_s, event.to_s, timed)
        detail = _tuple_new(RatedDetail, (
            event.destination, event.call_id, None, event.from_s, event.to_s, billed,
            timed.rate_per_minute, timed.connect_fee, timed.increment.text, prefix,
            version.effective_from))
    elif isinstance(event, SmsUsage):
        if version.sms is None:
            raise _no_service(version, "SMS")
        country, per_segment = version.sms.lookup(event.destination)
        amount = sms_cost(per_segment, event.segments)
        detail = _tuple_new(RatedDetail, (
            event.destination, event.message_id, None, None, None, event.segments,
            per_segment, None, None, None, version.effective_from))
    elif isinstance(event, TollFreeUsage):
        if version.tollfree is None:
            raise _no_service(version, "toll-free")
        country, timed = version.tollfree.lookup(event.tollfree_number, event.direction)
        amount, billed = timed_charge(event.from_s, event.to_s, timed)
        detail = _tuple_new(RatedDetail, (
            event.tollfree_number, event.call_id, event.direction, event.from_s, event.to_s,
            billed, timed.rate_per_minute, timed.connect_fee, timed.increment.text, None,
            version.effective_from))
    else:
        stt = version.stt
        if stt is None:
            raise _no_service(version, "speech-to-text")
        # Speech-to-text is priced as the interval 0..seconds: cost(seconds).
        amount, billed = timed_charge(0, event.seconds, stt)
        country = None
        detail = _tuple_new(RatedDetail, (
            None, event.job_id, None, 0, event.seconds, billed, stt.rate_per_minute,
            stt.connect_fee, stt.increment.text, None, version.effective_from))
    if amount > MAX_CHARGE:
        raise ChargeTooLarge(
            f"{event.service} priced at {amount} micro-{version.currency}, above the "
            f"limit of one event ({MAX_CHARGE} micro-units)")
    if detail[5] > MAX_RECORDED or (detail[4] or 0) > MAX_RECORDED:
        # Free usage is not limited by its price: an absurd duration or count at a
        # zero rate must still fit the ledger's bigint columns, or it would fail the
        # whole batch's statement.
        raise ChargeTooLarge(
            f"{event.service}: {max(detail[5], detail[4] or 0)} seconds or segments, more "
            f"than one event may record ({MAX_RECORDED})")
    return _new_charge(
        event.event_id,
        event.source,
        event.account_id,
        event.service,
        country,
        amount,
        version.currency,
        plan_id,
        detail,
    )


def call_rate_for(
    book: TariffBook, plan_id: str, destination: str, at: datetime | None = None
) -> TimedRate:
    """The call rate that would price a call to ``destination`` (pre-call authorization)."""
    version = book.plan(plan_id, at)
    if version.call is None:
        raise _no_service(version, "calls")
    return version.call.lookup(destination)[1]


__all__ = ["Charge", "call_rate_for", "priced_at", "rate"]

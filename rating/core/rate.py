"""Rating: one usage event and the plan's tariffs in, one ``Charge`` out (pure)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from rating.core.detail import CallDetail, Detail, SmsDetail, SttDetail, TollFreeDetail
from rating.core.errors import ChargeTooLarge, NoRate
from rating.core.events import CallUsage, Service, SmsUsage, TollFreeUsage, UsageEvent
from rating.core.pricing import TimedRate, billable_seconds, cost, sms_cost, timed_charge
from rating.core.tariff import PlanVersion, TariffBook


@dataclass(frozen=True, slots=True)
class Charge:
    """What one event costs; ``amount`` in micro-units of ``currency``, never negative.

    ``detail`` says what priced it (rating.core.detail), stored with the ledger row;
    never mutated after rating.
    """

    event_id: str
    source: str
    account_id: str
    service: Service
    country: str | None
    amount: int
    currency: str
    plan_id: str
    detail: Detail | None = None


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


def _new_charge(
    event_id: str,
    source: str,
    account_id: str,
    service: Service,
    country: str | None,
    amount: int,
    currency: str,
    plan_id: str,
    detail: Detail,
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


def _no_service(version: PlanVersion, service: str) -> NoRate:
    return NoRate(f"plan {version.plan_id!r} does not price {service}")


def rate(event: UsageEvent, book: TariffBook, plan_id: str) -> Charge:
    """Price ``event`` with the version of ``plan_id`` in force at the event's time.

    Raises ``UnknownPlan``, ``NoRate`` or ``ChargeTooLarge`` (all permanent: the
    event goes to the DLQ).
    """
    version = book.plan(plan_id, event.time)
    country: str | None
    detail: Detail
    # Most frequent service first; isinstance keeps mypy's narrowing.
    if isinstance(event, CallUsage):
        if version.call is None:
            raise _no_service(version, "calls")
        country, prefix, timed = version.call.match(event.destination)
        amount, billed = timed_charge(event.from_s, event.to_s, timed)
        detail = CallDetail(
            destination=event.destination, call_id=event.call_id, from_s=event.from_s,
            to_s=event.to_s, billed_seconds=billed, rate=timed.rate_text,
            connect_fee=timed.connect_fee_text, increment=timed.increment_text,
            prefix=prefix, country=country, effective_from=version.effective_from_text)
    elif isinstance(event, SmsUsage):
        if version.sms is None:
            raise _no_service(version, "SMS")
        sms_country, per_segment = version.sms.lookup(event.destination)
        country, amount = sms_country, sms_cost(per_segment, event.segments)
        detail = SmsDetail(
            destination=event.destination, message_id=event.message_id,
            segments=event.segments, rate=version.sms.texts[sms_country],
            country=sms_country, effective_from=version.effective_from_text)
    elif isinstance(event, TollFreeUsage):
        if version.tollfree is None:
            raise _no_service(version, "toll-free")
        tf_country, timed = version.tollfree.lookup(event.tollfree_number, event.direction)
        amount, billed = timed_charge(event.from_s, event.to_s, timed)
        country = tf_country
        detail = TollFreeDetail(
            tollfree_number=event.tollfree_number, direction=event.direction,
            call_id=event.call_id, from_s=event.from_s, to_s=event.to_s,
            billed_seconds=billed, rate=timed.rate_text, connect_fee=timed.connect_fee_text,
            increment=timed.increment_text, country=tf_country,
            effective_from=version.effective_from_text)
    else:
        stt = version.stt
        if stt is None:
            raise _no_service(version, "speech-to-text")
        country, amount = None, cost(event.seconds, stt)
        detail = SttDetail(
            job_id=event.job_id, seconds=event.seconds,
            billed_seconds=billable_seconds(event.seconds, stt.increment), rate=stt.rate_text,
            connect_fee=stt.connect_fee_text, increment=stt.increment_text,
            effective_from=version.effective_from_text)
    if amount > MAX_CHARGE:
        raise ChargeTooLarge(
            f"{event.service} priced at {amount} micro-{version.currency}, above the "
            f"limit of one event ({MAX_CHARGE} micro-units)")
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


__all__ = ["Charge", "call_rate_for", "rate"]

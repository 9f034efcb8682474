"""The pre-call quote: may an account start a service now, and for how long.

Pure: it reads a balance and the tariff book, nothing else. It answers from the
available credit: the balance minus what open reservations hold (contract §10).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

from rating.core.errors import NoRate, UnknownPlan
from rating.core.money import format_amount
from rating.core.pricing import TimedRate, seconds_covered
from rating.core.rate import call_rate_for
from rating.core.tariff import SERVICES, TariffBook

_E164 = re.compile(r"\+[0-9]{6,15}", re.ASCII)


class QuotedAccount(Protocol):
    """What a quote needs to know of an account."""

    @property
    def plan_id(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def balance(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def stt_billing(self) -> str: ...


def _e164(query: Mapping[str, str], name: str) -> str:
    # An unencoded "+" in a query string arrives as a space.
    value = query.get(name, "").strip()
    if value.isascii() and value.isdigit():
        value = "+" + value
    if not _E164.fullmatch(value):
        raise ValueError(f"{name}: expected an E.164 number such as +442071234567")
    return value


def _timed(base: dict[str, object], budget: int, rate: TimedRate) -> dict[str, object]:
    max_seconds = seconds_covered(budget, rate)
    return {**base, "allowed": max_seconds > 0, "max_seconds": max_seconds,
            "rate": {"per_minute": format_amount(rate.rate_per_minute),
                     "connect_fee": format_amount(rate.connect_fee),
                     "increment": str(rate.increment)}}


def authorize(account: QuotedAccount, book: TariffBook,
              query: Mapping[str, str]) -> dict[str, object]:
    """May ``account`` start this service now, and for how long (``max_seconds``)?

    Raises ``ValueError`` for a malformed query.
    """
    service = query.get("service", "")
    if service not in SERVICES:
        raise ValueError("service: expected call, tollfree, sms or stt")
    available = account.balance - account.held
    base: dict[str, object] = {"service": service, "balance": format_amount(account.balance),
                               "held": format_amount(account.held),
                               "available": format_amount(available),
                               "currency": account.currency}
    try:
        if service == "call":
            return _timed(base, available,
                          call_rate_for(book, account.plan_id, _e164(query, "destination")))
        version = book.plan(account.plan_id)
        if service == "tollfree":
            number, direction = _e164(query, "number"), query.get("direction", "inbound")
            if direction not in ("inbound", "outbound"):
                raise ValueError("direction: expected inbound or outbound")
            if version.tollfree is None:
                raise NoRate(f"plan {account.plan_id!r} does not price toll-free")
            return _timed(base, available, version.tollfree.lookup(number, direction)[1])
        if service == "sms":
            destination = _e164(query, "destination")
            if version.sms is None:
                raise NoRate(f"plan {account.plan_id!r} does not price SMS")
            price = version.sms.lookup(destination)[1]
            segments = available // price if price > 0 else None
            return {**base, "allowed": segments is None or segments >= 1, "max_seconds": None,
                    "max_segments": segments, "rate": {"per_segment": format_amount(price)}}
        if version.stt is None:
            raise NoRate(f"plan {account.plan_id!r} does not price speech-to-text")
        if account.stt_billing == "invoice":
            return {**base, "allowed": True, "max_seconds": None, "billing": "invoice",
                    "rate": _timed(base, 0, version.stt)["rate"]}
        return {**_timed(base, available, version.stt), "billing": "credit"}
    except (NoRate, UnknownPlan) as exc:
        return {**base, "allowed": False, "max_seconds": None, "rate": None,
                "reason": exc.code, "message": exc.message}

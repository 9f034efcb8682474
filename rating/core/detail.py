"""The rated detail of a charge: what priced it, stored with its ledger row (CONTRACT §13).

Enough to recompute the amount with the pricing rule of §4 alone, and to answer a
disputed charge: the number, the call (message, job), the interval or quantity,
the billed seconds, the rate and connect fee applied, the increment, the matched
prefix or country, and the plan version (its ``effective_from``). Money is a
decimal string as on every interface; the event's own field names are kept.

Plain dicts (``TypedDict``) rather than dataclasses: one is built per event on the
hot path and written as JSON, so it stays the cheapest object that can be.
"""

from __future__ import annotations

from typing import TypedDict


class CallDetail(TypedDict):
    destination: str
    call_id: str
    from_s: int
    to_s: int
    billed_seconds: int  # billable(to_s) - billable(from_s)
    rate: str  # per minute
    connect_fee: str  # charged by the event that starts at from_s = 0
    increment: str  # "first/step" seconds
    prefix: str | None  # the matched prefix row, None when the country row priced it
    country: str | None
    effective_from: str


class TollFreeDetail(TypedDict):
    tollfree_number: str
    direction: str
    call_id: str
    from_s: int
    to_s: int
    billed_seconds: int
    rate: str
    connect_fee: str
    increment: str
    country: str
    effective_from: str


class SmsDetail(TypedDict):
    destination: str
    message_id: str
    segments: int
    rate: str  # per segment
    country: str
    effective_from: str


class SttDetail(TypedDict):
    job_id: str
    seconds: int
    billed_seconds: int
    rate: str
    connect_fee: str
    increment: str
    effective_from: str


Detail = CallDetail | TollFreeDetail | SmsDetail | SttDetail

__all__ = ["CallDetail", "Detail", "SmsDetail", "SttDetail", "TollFreeDetail"]

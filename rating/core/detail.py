"""The rated detail of a charge: what priced it, stored with its ledger row (CONTRACT §13).

Enough to recompute the amount with the pricing rule of §4 alone, and to answer a
disputed charge: the number, the call (message, job), the interval or quantity,
the billed seconds, the rate and connect fee applied, the increment, the matched
prefix (the country is the charge's own), and the plan version (``effective_from``).

``RatedDetail`` is the same for every service, so that the ledger keeps it in a few
typed columns: built once per event on the hot path, it is a tuple of plain values
(money in micro-units). ``detail_json`` is how every reader shows it: the event's
own field names, money as decimal strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from rating.core.money import format_amount


class RatedDetail(NamedTuple):
    # The destination (call, SMS) or the toll-free number; None for speech-to-text.
    number: str | None
    # data.call_id, data.message_id or data.job_id.
    usage_id: str
    # Toll-free only: inbound or outbound.
    direction: str | None
    # Elapsed seconds the event covers (speech-to-text: 0..seconds); None for SMS.
    from_s: int | None
    to_s: int | None
    # Billed seconds, billable(to_s) - billable(from_s), of a timed service; SMS segments.
    quantity: int
    # Micro-units per minute (per segment for SMS), and the connect fee (None for SMS),
    # charged by the event that starts at from_s = 0.
    rate: int
    connect_fee: int | None
    # "first/step" seconds; None for SMS.
    increment: str | None
    # The matched prefix row, None when the country row priced it (calls only).
    prefix: str | None
    # effective_from of the plan version that priced it.
    plan_version: datetime


def iso(when: datetime) -> str:
    return (when.astimezone(UTC) if when.tzinfo else when).isoformat().replace("+00:00", "Z")


def detail_json(service: str, country: str | None, d: RatedDetail) -> dict[str, object]:
    """The detail as readers see it (``events show``, statements, the ledger API)."""
    effective_from = iso(d.plan_version)
    if service == "sms":
        return {"destination": d.number, "message_id": d.usage_id, "segments": d.quantity,
                "rate": format_amount(d.rate), "country": country,
                "effective_from": effective_from}
    timed = {"billed_seconds": d.quantity, "rate": format_amount(d.rate),
             "connect_fee": format_amount(d.connect_fee or 0), "increment": d.increment}
    if service == "stt":
        return {"job_id": d.usage_id, "seconds": d.to_s, **timed,
                "effective_from": effective_from}
    if service == "tollfree":
        return {"tollfree_number": d.number, "direction": d.direction, "call_id": d.usage_id,
                "from_s": d.from_s, "to_s": d.to_s, **timed, "country": country,
                "effective_from": effective_from}
    return {"destination": d.number, "call_id": d.usage_id, "from_s": d.from_s, "to_s": d.to_s,
            **timed, "prefix": d.prefix, "country": country, "effective_from": effective_from}


__all__ = ["RatedDetail", "detail_json", "iso"]

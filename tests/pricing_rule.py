"""The pricing rule of CONTRACT §4, written again from the contract's text with ``Decimal``.

Independent of ``rating.core.pricing``: a charge's stored detail priced by this gives
its amount back only if the detail really says what priced it.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

SIX_PLACES = Decimal("0.000001")


def billable(t: int, increment: str) -> int:
    a, b = (int(part) for part in increment.split("/"))
    if t == 0:
        return 0
    if t <= a:
        return a
    return a + int((Decimal(t - a) / b).to_integral_value(ROUND_CEILING)) * b


def cost(t: int, rate: str, connect_fee: str, increment: str) -> Decimal:
    if t == 0:
        return Decimal(0)
    exact = Decimal(connect_fee) + Decimal(rate) * billable(t, increment) / 60
    return exact.quantize(SIX_PLACES, ROUND_HALF_UP)


def reprice(service: str, detail: dict[str, Any]) -> Decimal:
    """The amount (currency units) that ``detail`` of a ``service`` charge comes to."""
    if service == "sms":
        return (Decimal(detail["rate"]) * detail["segments"]).quantize(SIX_PLACES,
                                                                       ROUND_HALF_UP)
    rate, fee, increment = detail["rate"], detail["connect_fee"], detail["increment"]
    if service == "stt":
        return cost(detail["seconds"], rate, fee, increment)
    return (cost(detail["to_s"], rate, fee, increment)
            - cost(detail["from_s"], rate, fee, increment))


def billed_seconds(service: str, detail: dict[str, Any]) -> int:
    if service == "stt":
        return billable(detail["seconds"], detail["increment"])
    return (billable(detail["to_s"], detail["increment"])
            - billable(detail["from_s"], detail["increment"]))

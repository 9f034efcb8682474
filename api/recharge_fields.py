"""The optional fields of ``PUT /v1/accounts/{id}/auto-recharge`` beside enabled, amount and
below: ``max_per_day`` (CONTRACT §12) and ``alert_thresholds`` (balance.alert)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg

from api.http_json import int_field
from rating.core.errors import ApiError, InvalidRequest
from rating.core.money import parse_amount
from rating.stores.recharge_settings import (
    check_alert_thresholds,
    check_max_per_day,
    set_alert_thresholds,
    set_max_per_day,
)

T = TypeVar("T")


def _alert_thresholds(body: dict[str, Any]) -> tuple[int, ...] | None:
    if "alert_thresholds" not in body:
        return None
    values = body["alert_thresholds"]  # null is not an array: refused, as documented
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, "invalid_field",
                       "alert_thresholds: expected an array of decimal strings")
    try:
        amounts = [parse_amount(v) for v in values]
    except ValueError as exc:
        raise ApiError(400, "invalid_amount", f"alert_thresholds: {exc}") from None
    return _checked(lambda: check_alert_thresholds(amounts))


def _checked(check: Callable[[], T]) -> T:
    try:
        return check()
    except InvalidRequest as exc:
        raise ApiError(422, exc.code, exc.message) from None


async def recharge_limits(pool: asyncpg.Pool, account_id: str, body: dict[str, Any]) -> None:
    """Validate both fields first, then apply those present (absent: unchanged)."""
    max_per_day = None
    if "max_per_day" in body:  # an integer as JSON Schema counts them (1.0 too), never null
        if body["max_per_day"] is None:
            raise ApiError(400, "invalid_field", "max_per_day: expected int, got null")
        max_per_day = int_field(body, "max_per_day")
        _checked(lambda: check_max_per_day(max_per_day))
    thresholds = _alert_thresholds(body)
    if max_per_day is not None:
        await set_max_per_day(pool, account_id, max_per_day)
    if thresholds is not None:
        await set_alert_thresholds(pool, account_id, thresholds)

"""Settings beside automatic recharge's amount and threshold: its daily limit and the
account's notification thresholds; and what the account JSON shows of recharges.

``account_view`` is the account JSON with what only a query can tell: the last recharge
(status, amount, when, why) and the runway, days of credit left at the last 7 days'
average spend. Reads of one account only (the account API and ``accounts show``): the
usage path never computes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from rating.core.errors import InvalidRequest, UnknownAccount
from rating.core.money import format_amount
from rating.core.thresholds import alert_thresholds
from rating.stores.accounts import Account, account_json

MAX_PER_DAY_LIMIT = 100  # the most recharges a day an account may allow (a CHECK too)
RUNWAY_DAYS = 7


def check_max_per_day(value: int) -> int:
    if not 1 <= value <= MAX_PER_DAY_LIMIT:
        raise InvalidRequest(f"max_per_day: expected 1..{MAX_PER_DAY_LIMIT}, got {value}",
                             code="invalid_settings")
    return value


def check_alert_thresholds(values: Sequence[int]) -> tuple[int, ...]:
    try:
        return alert_thresholds(values)
    except ValueError as exc:
        raise InvalidRequest(f"alert_thresholds: {exc}", code="invalid_settings") from None


async def set_max_per_day(pool: asyncpg.Pool, account_id: str, max_per_day: int) -> None:
    """At most ``max_per_day`` automatic recharges in any 24 hours, from the next request."""
    done = await pool.fetchval(
        "UPDATE accounts SET auto_recharge_max_per_day = $2, updated_at = now()"
        " WHERE id = $1 RETURNING 1", account_id, check_max_per_day(max_per_day))
    if done is None:
        raise UnknownAccount(f"unknown account {account_id!r}")


async def set_alert_thresholds(pool: asyncpg.Pool, account_id: str,
                               thresholds: Sequence[int]) -> None:
    """``balance.alert`` when the balance falls below each of ``thresholds`` (none: [])."""
    done = await pool.fetchval(
        "UPDATE accounts SET alert_thresholds = $2, updated_at = now()"
        " WHERE id = $1 RETURNING 1", account_id, list(check_alert_thresholds(thresholds)))
    if done is None:
        raise UnknownAccount(f"unknown account {account_id!r}")


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def runway_days(balance: int, spend: int) -> float | None:
    """Days ``balance`` lasts at the average daily spend of ``spend`` over RUNWAY_DAYS days,
    rounded down to a tenth; None when nothing was spent (no figure to extrapolate)."""
    if spend <= 0:
        return None
    if balance <= 0:
        return 0.0
    return (10 * RUNWAY_DAYS * balance // spend) / 10


async def account_view(pool: asyncpg.Pool, account: Account) -> dict[str, object]:
    """The account JSON with its last recharge and its runway."""
    row = await pool.fetchrow(
        f"""
        SELECT (SELECT coalesce(-sum(amount), 0)::bigint FROM ledger
                WHERE account_id = $1 AND kind = 'usage'
                  AND recorded_at >= now() - interval '{RUNWAY_DAYS} days') AS spend,
               r.status, r.amount, r.attempt, r.last_reason,
               coalesce(r.settled_at, r.updated_at) AS at
        FROM (SELECT 1) one
        LEFT JOIN LATERAL (SELECT * FROM recharges WHERE account_id = $1
                           ORDER BY id DESC LIMIT 1) r ON true
        """, account.id)
    assert row is not None
    body = account_json(account)
    spend = max(0, row["spend"])
    body["runway"] = runway_days(account.balance, spend)
    body["average_daily_spend"] = format_amount(spend // RUNWAY_DAYS)
    body["last_recharge"] = None if row["status"] is None else {
        "status": row["status"], "amount": format_amount(row["amount"]),
        "attempt": row["attempt"], "at": _iso(row["at"]),
        # Why it failed, was cancelled or is being retried (a decline's reason).
        "reason": None if row["status"] == "succeeded" else row["last_reason"]}
    return body

"""Reads behind an account's billing view: its one-time payments, its automatic
recharges, and a month of its ledger (for the CSV download). Read only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from rating.stores.accounts import LedgerEntry
from rating.stores.explain import HAPPENED_AT

_PAGE = 1_000  # ledger rows fetched per round trip when exporting a month


@dataclass(frozen=True, slots=True)
class TopupPayment:
    """A one-time top-up: requested or pending (in flight), succeeded or declined."""

    idempotency_key: str
    amount: int
    currency: str
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Recharge:
    """An automatic recharge: in flight (requested, charging, pending) or settled."""

    amount: int
    currency: str
    status: str
    attempt: int
    reason: str | None
    created_at: datetime
    settled_at: datetime | None


@dataclass(frozen=True, slots=True)
class RechargeState:
    in_flight: Recharge | None
    last: Recharge | None  # the latest that settled (succeeded, failed or cancelled)


async def recent_topups(pool: asyncpg.Pool, account_id: str,
                        limit: int = 10) -> list[TopupPayment]:
    """The latest one-time payments of the account, newest first."""
    rows = await pool.fetch(
        "SELECT idempotency_key, amount, currency::text AS currency, status, reason,"
        " created_at, updated_at FROM topup_payments WHERE account_id = $1"
        " ORDER BY id DESC LIMIT $2", account_id, limit)
    return [TopupPayment(**dict(r)) for r in rows]


async def topup_payment(pool: asyncpg.Pool, account_id: str,
                        idempotency_key: str) -> TopupPayment | None:
    row = await pool.fetchrow(
        "SELECT idempotency_key, amount, currency::text AS currency, status, reason,"
        " created_at, updated_at FROM topup_payments"
        " WHERE account_id = $1 AND idempotency_key = $2", account_id, idempotency_key)
    return None if row is None else TopupPayment(**dict(row))


_RECHARGE = ("SELECT amount, currency::text AS currency, status, attempt,"
             " last_reason AS reason, created_at, settled_at FROM recharges")


async def recharge_state(pool: asyncpg.Pool, account_id: str) -> RechargeState:
    in_flight = await pool.fetchrow(
        _RECHARGE + " WHERE account_id = $1 AND status IN ('requested', 'charging', 'pending')",
        account_id)
    last = await pool.fetchrow(
        _RECHARGE + " WHERE account_id = $1 AND status IN ('succeeded', 'failed', 'cancelled')"
        " ORDER BY settled_at DESC NULLS LAST, id DESC LIMIT 1", account_id)
    return RechargeState(None if in_flight is None else Recharge(**dict(in_flight)),
                         None if last is None else Recharge(**dict(last)))


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``"2026-11"`` -> [start, end) in UTC; ``ValueError`` for anything else."""
    year, sep, number = month.partition("-")
    if not (sep and len(year) == 4 and len(number) == 2 and year.isascii()
            and year.isdigit() and number.isascii() and number.isdigit()):
        raise ValueError(f"expected YYYY-MM, got {month!r}")
    start = datetime(int(year), int(number), 1, tzinfo=UTC)  # raises for month 13
    end = (datetime(start.year + 1, 1, 1, tzinfo=UTC) if start.month == 12
           else datetime(start.year, start.month + 1, 1, tzinfo=UTC))
    return start, end


def this_month(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m")


async def month_ledger(pool: asyncpg.Pool, account_id: str,
                       month: str) -> AsyncIterator[LedgerEntry]:
    """Every ledger row of the account that happened in ``month`` (UTC, by
    ``HAPPENED_AT``, as statements place them), in entry order.

    Fetched a page at a time by entry id, so a busy month is never held in memory.
    """
    start, end = month_bounds(month)
    after = 0
    while True:
        rows = await pool.fetch(
            f"""
            SELECT entry_id, kind, service, event_source, event_id, amount, accrued, currency,
                   country, reason, event_time, recorded_at
            FROM ledger
            WHERE account_id = $1 AND entry_id > $2
              AND {HAPPENED_AT} >= $3 AND {HAPPENED_AT} < $4
            ORDER BY entry_id LIMIT $5
            """, account_id, after, start, end, _PAGE)
        for r in rows:
            yield LedgerEntry(**dict(r))
        if len(rows) < _PAGE:
            return
        after = rows[-1]["entry_id"]

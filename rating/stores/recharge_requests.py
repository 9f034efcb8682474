"""Asking for an automatic recharge: the row the recharge worker sends, and its event.

Three things start a recharge, and all go through ``request_recharge``, under the
account's row lock: a ``balance.low`` crossing (the recharge worker), automatic recharge
turned on, or its threshold raised, while the balance is already below the threshold
(the account settings), and the sweeper finding an account left below its threshold.

A crossing's recharge is keyed by the crossing's ``balance.low`` event id, and the
sweeper derives the same key (``recharge_key``) for the account's latest crossing, so a
sweep and a ``balance.low`` handler that meet ask for one recharge, never two. At most
``auto_recharge_max_per_day`` recharges (succeeded, or in flight) fall in any 24 hours;
past that none is requested and ``recharge.limited`` says so, at most once in 24 hours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from rating.core.errors import UnknownAccount
from rating.core.money import format_amount
from rating.stores.db import Connection
from rating.stores.outbox import OutboxEvent, insert_events

RequestOutcome = Literal["requested", "in_flight", "limited", "duplicate"]
# What became of one step of a recharge (rating_recharge_outcomes_total's label).
RechargeOutcome = Literal[
    "succeeded", "pending", "declined", "failed", "hard_declined", "cancelled", "unavailable",
    "duplicate", "in_flight", "limited", "superseded", "disabled", "not_below",
    "unknown_account", "busy", "error"]
WINDOW = "interval '24 hours'"

# What the recharge paths read of an account (and lock, with FOR UPDATE appended).
ACCOUNT_SQL = (
    "SELECT id, balance, low_balance_threshold, currency::text AS currency,"
    " auto_recharge_enabled, auto_recharge_amount, auto_recharge_max_per_day, version"
    " FROM accounts WHERE id = $1")


async def account_row(conn: Connection, account_id: str, *,
                      lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(ACCOUNT_SQL + (" FOR UPDATE" if lock else ""), account_id)
    if row is None:  # accounts are never deleted; a recharge always has one
        raise UnknownAccount(f"unknown account {account_id!r}")
    return row


@dataclass(frozen=True, slots=True)
class RechargeAttempt:
    """One attempt of one recharge, as the worker claims it."""

    id: int
    crossing_id: str
    account_id: str
    amount: int
    currency: str
    attempt: int
    status: str  # before the claim: requested, charging or pending
    payment_id: str | None

    @property
    def key(self) -> str:
        return f"recharge/{self.crossing_id}/{self.attempt}"


def recharge_event(attempt: RechargeAttempt, type_: str, suffix: str,
                   account: asyncpg.Record, extra: Mapping[str, object]) -> OutboxEvent:
    """A ``recharge.*`` event: ``data.attempt`` (1, 2, ...) and ``data.amount`` always."""
    return OutboxEvent(
        f"{attempt.crossing_id}/{attempt.attempt}/{suffix}", type_, attempt.account_id,
        account["balance"], account["low_balance_threshold"], account["currency"].strip(),
        {"amount": format_amount(attempt.amount), "attempt": attempt.attempt,
         "crossing_id": attempt.crossing_id, **extra})


@dataclass(frozen=True, slots=True)
class RecentRecharges:
    in_flight: int
    succeeded: int  # settled in the last 24 hours
    # When the limit lets the next one through: 24 hours after the oldest that counts.
    next_allowed_at: datetime | None


async def recent_recharges(conn: Connection, account_id: str,
                           max_per_day: int) -> RecentRecharges:
    row = await conn.fetchrow(
        f"""
        SELECT count(*) FILTER (WHERE status <> 'succeeded') AS in_flight,
               count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
               (SELECT settled_at + {WINDOW} FROM recharges
                WHERE account_id = $1 AND status = 'succeeded'
                  AND settled_at > now() - {WINDOW}
                ORDER BY settled_at DESC OFFSET $2 - 1 LIMIT 1) AS next_allowed_at
        FROM recharges
        WHERE account_id = $1 AND (status IN ('requested', 'charging', 'pending')
              OR (status = 'succeeded' AND settled_at > now() - {WINDOW}))
        """, account_id, max_per_day)
    assert row is not None
    return RecentRecharges(row["in_flight"], row["succeeded"], row["next_allowed_at"])


async def request_recharge(conn: Connection, account_id: str, crossing_id: str,
                           account: asyncpg.Record) -> tuple[RequestOutcome, int | None]:
    """A recharge of the account's configured amount, due now, and its ``recharge.requested``
    event: ``("requested", id)``; or why not: one is in flight already, the daily limit is
    reached (``recharge.limited`` announced unless it was in the last 24 hours), or this
    crossing has had its recharge.

    ``account`` is the account's row (``_ACCOUNT_COLUMNS``), locked by the caller's
    transaction: requests for one account are serialized on that lock.
    """
    max_per_day = account["auto_recharge_max_per_day"]
    recent = await recent_recharges(conn, account_id, max_per_day)
    if recent.in_flight:
        return "in_flight", None
    if recent.succeeded >= max_per_day:
        await _announce_limited(conn, account_id, account, recent)
        return "limited", None
    recharge_id: int | None = await conn.fetchval(
        """
        INSERT INTO recharges (crossing_id, account_id, amount, currency, next_attempt_at)
        VALUES ($1, $2, $3, $4, now())
        ON CONFLICT DO NOTHING RETURNING id
        """, crossing_id, account_id, account["auto_recharge_amount"], account["currency"])
    if recharge_id is None:  # the crossing's recharge exists (one in flight was ruled out)
        return "duplicate", None
    attempt = RechargeAttempt(recharge_id, crossing_id, account_id,
                              account["auto_recharge_amount"], account["currency"].strip(), 1,
                              "requested", None)
    await insert_events(conn, [recharge_event(attempt, "recharge.requested",
                                              "recharge.requested", account, {})])
    return "requested", recharge_id


async def _announce_limited(conn: Connection, account_id: str, account: asyncpg.Record,
                            recent: RecentRecharges) -> None:
    announced_at: datetime | None = await conn.fetchval(
        f"""
        UPDATE accounts SET recharge_limited_at = now()
        WHERE id = $1 AND (recharge_limited_at IS NULL
                           OR recharge_limited_at <= now() - {WINDOW})
        RETURNING recharge_limited_at
        """, account_id)
    if announced_at is None:
        return  # announced in the last 24 hours
    until = recent.next_allowed_at
    stamp = int(announced_at.timestamp() * 1_000_000)
    await insert_events(conn, [OutboxEvent(
        f"{account_id}:{stamp}:recharge.limited", "recharge.limited", account_id,
        account["balance"], account["low_balance_threshold"], account["currency"].strip(),
        {"amount": format_amount(account["auto_recharge_amount"]), "attempt": 1,
         "max_per_day": account["auto_recharge_max_per_day"],
         "recharges_in_24h": recent.succeeded,
         "next_allowed_at": None if until is None else until.isoformat().replace("+00:00", "Z")},
    )])


async def latest_crossing(conn: Connection, account_id: str) -> str | None:
    """The id of the account's latest ``balance.low`` event, if the outbox still holds one."""
    latest: str | None = await conn.fetchval(
        "SELECT event_id FROM outbox WHERE account_id = $1 AND type = 'balance.low'"
        " ORDER BY seq DESC LIMIT 1", account_id)
    return latest


async def recharge_key(conn: Connection, account_id: str, version: int) -> str:
    """The key of a recharge the sweeper asks for, the account's row being locked.

    The latest crossing, as a ``balance.low`` handler would key it; when that crossing has
    had its recharge already (one smaller than the deficit, or one that failed), the
    account's version, which every sweeper that finds the account in this state shares.
    """
    crossing = await latest_crossing(conn, account_id)
    if crossing is not None and not await conn.fetchval(
            "SELECT 1 FROM recharges WHERE crossing_id = $1", crossing):
        return crossing
    return f"{account_id}:{version}:recharge.sweep"

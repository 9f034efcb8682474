"""Asking for an automatic recharge: the row the recharge worker sends, and its event.

Two things start a recharge, and both go through ``request_recharge``: a ``balance.low``
crossing (the recharge worker), and automatic recharge turned on, or its threshold
raised, while the balance is already below the threshold (the account settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from rating.core.money import format_amount
from rating.stores.db import Connection
from rating.stores.outbox import OutboxEvent, insert_events


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
                   account: asyncpg.Record, extra: Mapping[str, str]) -> OutboxEvent:
    return OutboxEvent(
        f"{attempt.crossing_id}/{attempt.attempt}/{suffix}", type_, attempt.account_id,
        account["balance"], account["low_balance_threshold"], account["currency"].strip(),
        {"amount": format_amount(attempt.amount), "attempt": str(attempt.attempt),
         "crossing_id": attempt.crossing_id, **extra})


async def request_recharge(conn: Connection, account_id: str, crossing_id: str,
                           account: asyncpg.Record) -> int | None:
    """A recharge of the account's configured amount, due now, and its ``recharge.requested``
    event; None when this crossing has one already or another recharge is in flight.

    ``account`` is the account's row, locked by the caller's transaction.
    """
    recharge_id: int | None = await conn.fetchval(
        """
        INSERT INTO recharges (crossing_id, account_id, amount, currency, next_attempt_at)
        VALUES ($1, $2, $3, $4, now())
        ON CONFLICT DO NOTHING RETURNING id
        """, crossing_id, account_id, account["auto_recharge_amount"], account["currency"])
    if recharge_id is None:
        return None
    attempt = RechargeAttempt(recharge_id, crossing_id, account_id,
                              account["auto_recharge_amount"], account["currency"].strip(), 1,
                              "requested", None)
    await insert_events(conn, [recharge_event(attempt, "recharge.requested",
                                              "recharge.requested", account, {})])
    return recharge_id

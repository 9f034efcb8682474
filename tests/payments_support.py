"""Helpers of the payment tests (top-ups and automatic recharges): accounts, usage debited
the way the usage consumer does it, and what the ledger, outbox and recharges hold."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from jsonschema import Draft202012Validator

from rating.core.money import parse_amount
from rating.core.rate import Charge
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from rating.stores.outbox import cloud_event
from rating.stores.recharges import RechargePolicy

EUR = parse_amount
FAST = RechargePolicy(retry_delays_s=(0.6, 0.6), answer_timeout_s=0.6, settle_poll_s=0.1)
_event_ids = itertools.count(1)
BALANCE_EVENT = Draft202012Validator(json.loads(
    (Path(__file__).resolve().parent.parent / "schemas" / "balance.event.json").read_text()))


async def make_account(pool: asyncpg.Pool, account_id: str = "acct-1", balance: str = "10.00",
                       *, recharge: str | None = "20.00", below: str = "5.00") -> None:
    store = AccountStore(pool)
    await store.create(NewAccount(account_id, "standard", "EUR", EUR(balance), EUR(below)))
    if recharge is not None:
        await store.set_auto_recharge(account_id, amount=EUR(recharge), below=EUR(below))


async def debit(pool: asyncpg.Pool, account_id: str, amount: str) -> None:
    """Usage debited the way the usage consumer does it."""
    n = next(_event_ids)
    charge = Charge(f"e{n}", "switch-test", account_id, "call", "GB", EUR(amount), "EUR",
                    "standard")
    async with pool.acquire() as conn, conn.transaction():
        await apply_usage(conn, [RatedUsage(charge, datetime.now(UTC), False)])


async def balance(pool: asyncpg.Pool, account_id: str = "acct-1") -> int:
    value: int = await pool.fetchval("SELECT balance FROM accounts WHERE id = $1", account_id)
    return value


async def crossings(pool: asyncpg.Pool, account_id: str = "acct-1") -> list[str]:
    rows = await pool.fetch("SELECT event_id FROM outbox WHERE type = 'balance.low'"
                            " AND account_id = $1 ORDER BY seq", account_id)
    return [r["event_id"] for r in rows]


async def outbox_types(pool: asyncpg.Pool, account_id: str = "acct-1") -> list[str]:
    rows = await pool.fetch("SELECT type FROM outbox WHERE account_id = $1 ORDER BY seq",
                            account_id)
    return [r["type"] for r in rows]


async def credits(pool: asyncpg.Pool, kind: str, account_id: str = "acct-1") -> list[int]:
    rows = await pool.fetch("SELECT amount FROM ledger WHERE account_id = $1 AND kind = $2"
                            " ORDER BY entry_id", account_id, kind)
    return [r["amount"] for r in rows]


async def recharges(pool: asyncpg.Pool, account_id: str = "acct-1") -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT crossing_id, status FROM recharges WHERE account_id = $1"
                            " ORDER BY id", account_id)
    return [(r["crossing_id"], r["status"]) for r in rows]


async def events(pool: asyncpg.Pool, type_: str,
                 account_id: str = "acct-1") -> list[dict[str, Any]]:
    """``data`` of the account's outbox events of ``type_``, as published (checked against
    schemas/balance.event.json), oldest first."""
    rows = await pool.fetch(
        "SELECT event_id, type, account_id, balance, threshold, currency, extra, created_at"
        " FROM outbox WHERE type = $1 AND account_id = $2 ORDER BY seq", type_, account_id)
    found = []
    for r in rows:
        event = orjson.loads(cloud_event(
            r["event_id"], r["type"], r["account_id"], r["balance"], r["threshold"],
            r["currency"].strip(), orjson.loads(r["extra"]), r["created_at"]))
        BALANCE_EVENT.validate(event)
        found.append(event["data"])
    return found

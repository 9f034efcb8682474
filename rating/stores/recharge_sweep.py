"""The recharge sweeper's queries: accounts left below their threshold with no recharge coming.

A recharge used to start only from a ``balance.low`` crossing. One whose handling failed
for good, a recharge smaller than the deficit, or one that ended ``failed`` or
``cancelled`` left the account below its threshold, where it never crosses again: no
recharge ever came. The sweeper does not wait for a crossing: every account with
automatic recharge on (so not turned off by declines), below its threshold, nothing in
flight and under its daily limit is *due*, and gets a recharge requested, keyed as a
``balance.low`` handler would key it (``recharge_requests.recharge_key``). An account
below its threshold at its daily limit is swept too, once, for ``recharge.limited``.
"""

from __future__ import annotations

from typing import Literal

import asyncpg

from rating.stores.recharge_requests import (
    ACCOUNT_SQL,
    WINDOW,
    RequestOutcome,
    recharge_key,
    request_recharge,
)

# Accounts with automatic recharge on are few beside the rest (a partial index holds
# them), and each one's recharges are read by index.
_BELOW = """
FROM accounts a
WHERE a.auto_recharge_enabled AND a.balance < a.low_balance_threshold
  AND NOT EXISTS (SELECT 1 FROM recharges r WHERE r.account_id = a.id
                  AND r.status IN ('requested', 'charging', 'pending'))
"""
_SUCCEEDED_IN_WINDOW = f"""(SELECT count(*) FROM recharges r WHERE r.account_id = a.id
       AND r.status = 'succeeded' AND r.settled_at > now() - {WINDOW})"""
_DUE = _BELOW + f"  AND {_SUCCEEDED_IN_WINDOW} < a.auto_recharge_max_per_day\n"
# Below the threshold at the daily limit, and not yet told: the recharge the account
# needs is refused by the limit, and recharge.limited says so now, not at the next
# balance.low (request_recharge announces it, once in 24 hours).
_LIMITED_UNSAID = _BELOW + f"""  AND {_SUCCEEDED_IN_WINDOW} >= a.auto_recharge_max_per_day
  AND (a.recharge_limited_at IS NULL OR a.recharge_limited_at <= now() - {WINDOW})
"""


async def due_accounts(pool: asyncpg.Pool, limit: int) -> list[str]:
    """Ids of accounts due a recharge, or due ``recharge.limited``; at most ``limit``."""
    rows = await pool.fetch(
        f"(SELECT a.id {_DUE}) UNION (SELECT a.id {_LIMITED_UNSAID}) ORDER BY id LIMIT $1",
        limit)
    return [r["id"] for r in rows]


async def unserved_accounts(pool: asyncpg.Pool) -> int:
    """How many accounts are due a recharge now; right after a sweep it should be 0."""
    n: int = await pool.fetchval("SELECT count(*) " + _DUE)
    return n


async def disabled_accounts(pool: asyncpg.Pool) -> dict[str, int]:
    """Accounts whose automatic recharge declines turned off, by reason."""
    rows = await pool.fetch(
        "SELECT auto_recharge_disabled_reason AS reason, count(*) AS n FROM accounts"
        " WHERE auto_recharge_disabled_reason IS NOT NULL AND NOT auto_recharge_enabled"
        " GROUP BY 1")
    return {r["reason"]: r["n"] for r in rows}


async def request_due(pool: asyncpg.Pool, account_id: str,
                      ) -> tuple[RequestOutcome | Literal["disabled", "not_below"], int | None]:
    """Ask a recharge for one account the sweep found due, if it still is under its lock."""
    async with pool.acquire() as conn, conn.transaction():
        account = await conn.fetchrow(ACCOUNT_SQL + " FOR UPDATE", account_id)
        if account is None or not account["auto_recharge_enabled"]:
            return "disabled", None
        if account["balance"] >= account["low_balance_threshold"]:
            return "not_below", None
        key = await recharge_key(conn, account_id, account["version"])
        return await request_recharge(conn, account_id, key, account)

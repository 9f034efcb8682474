"""Credit on its way to an account: one-time top-ups and automatic recharges charged, or
being charged, and not credited yet.

The balance bound is checked before a card is charged, and counts this credit too:
otherwise two charges could each pass the check and the second be taken but never
credited. Read under a per-account lock held to the end of the caller's transaction,
which every such check takes, so that no two of them pass at once.
"""

from __future__ import annotations

from rating.stores.db import Connection

_ON_ITS_WAY = """
SELECT (SELECT coalesce(sum(amount), 0) FROM topup_payments
        WHERE account_id = $1 AND status IN ('requested', 'pending'))
     + (SELECT coalesce(sum(amount), 0) FROM recharges
        WHERE account_id = $1 AND status IN ('requested', 'charging', 'pending')
          AND id IS DISTINCT FROM $2)
"""


async def credit_on_its_way(conn: Connection, account_id: str, *,
                            besides_recharge: int | None = None) -> int:
    """Micro-units on their way to ``account_id``, leaving out the recharge
    ``besides_recharge`` (the one being checked); takes the account's lock first."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       "credit:" + account_id)
    total: int = await conn.fetchval(_ON_ITS_WAY, account_id, besides_recharge)
    return total

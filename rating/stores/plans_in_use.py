"""Which plans accounts are on, and in which currencies (for the tariff reload check)."""

from __future__ import annotations

from rating.stores.db import Connection
from rating.tariffbook.references import PlansInUse


async def plans_in_use(conn: Connection) -> PlansInUse:
    rows = await conn.fetch(
        "SELECT plan_id, array_agg(DISTINCT currency::text) AS currencies"
        " FROM accounts GROUP BY plan_id")
    return {r["plan_id"]: frozenset(c.strip() for c in r["currencies"]) for r in rows}

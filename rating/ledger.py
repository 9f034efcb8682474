"""The usage write path: a whole rated batch debited in one PostgreSQL transaction.

Per batch: lock the accounts in sorted id order (so concurrent writers never
deadlock), insert every ledger row with ``ON CONFLICT DO NOTHING`` on the event
key (a redelivered event changes nothing), add each account's sum of the rows
actually inserted to its balance, and write the threshold crossings to the outbox
— all in the caller's transaction, which commits before any Kafka offset does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rating.accounts import SttBilling
from rating.db import Connection
from rating.outbox import BalanceChange, OutboxEvent, crossing_events, insert_events
from rating.rate import Charge


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """What rating needs to know of an account."""

    plan_id: str
    currency: str
    stt_billing: SttBilling


@dataclass(frozen=True, slots=True)
class RatedUsage:
    charge: Charge
    event_time: datetime
    on_invoice: bool  # speech-to-text billed on the monthly invoice, not from credit


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """What one batch wrote for a (service, currency, kind): kind is usage or invoice."""

    service: str
    currency: str
    kind: str
    events: int
    amount: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    applied: int
    duplicates: int
    announced: list[OutboxEvent]
    totals: list[UsageTotal]


async def lookup_accounts(conn: Connection,
                          account_ids: Sequence[str]) -> dict[str, AccountInfo]:
    rows = await conn.fetch(
        "SELECT id, plan_id, currency, stt_billing FROM accounts WHERE id = ANY($1::text[])",
        list(account_ids))
    return {r["id"]: AccountInfo(r["plan_id"], r["currency"], r["stt_billing"]) for r in rows}


_APPLY = """
WITH input AS (
    SELECT event_source, event_id, account_id,
           CASE WHEN on_invoice THEN 'invoice' ELSE 'usage' END AS kind,
           CASE WHEN on_invoice THEN 0 ELSE -price END AS amount,
           CASE WHEN on_invoice THEN price ELSE 0 END AS accrued,
           service, country, plan_id, currency, event_time
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bool[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::timestamptz[])
        AS t(event_source, event_id, account_id, price, on_invoice, service, country,
             plan_id, currency, event_time)
), inserted AS (
    INSERT INTO ledger (event_source, event_id, account_id, kind, amount, accrued, service,
                        country, plan_id, currency, event_time)
    SELECT * FROM input
    ON CONFLICT (event_source, event_id) DO NOTHING
    RETURNING account_id, amount, accrued, service, currency, kind
), sums AS (
    SELECT account_id, sum(amount)::bigint AS total FROM inserted GROUP BY account_id
), updated AS (
    UPDATE accounts a
    SET balance = a.balance + s.total, version = a.version + 1, updated_at = now()
    FROM sums s
    WHERE a.id = s.account_id AND s.total <> 0
    RETURNING a.id, a.balance - s.total AS before, a.balance AS after,
              a.low_balance_threshold, a.currency, a.version
)
SELECT id, before, after, low_balance_threshold, currency::text, version,
       NULL::text AS service, NULL::text AS kind, NULL::bigint AS events
FROM updated
UNION ALL
SELECT NULL, NULL, NULL, NULL, currency::text, sum(accrued - amount)::bigint, service, kind,
       count(*)
FROM inserted GROUP BY currency, service, kind
"""


async def apply_usage(conn: Connection, batch: Sequence[RatedUsage]) -> BatchResult:
    """Debit ``batch`` exactly once; must run inside the caller's transaction."""
    if not batch:
        return BatchResult(0, 0, [], [])
    account_ids = sorted({u.charge.account_id for u in batch})
    await conn.execute(
        "SELECT 1 FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
        account_ids)
    charges = [u.charge for u in batch]
    rows = await conn.fetch(
        _APPLY,
        [c.source for c in charges], [c.event_id for c in charges],
        [c.account_id for c in charges], [c.amount for c in charges],
        [u.on_invoice for u in batch], [c.service for c in charges], [c.country for c in charges],
        [c.plan_id for c in charges], [c.currency for c in charges],
        [u.event_time for u in batch],
    )
    totals = [UsageTotal(r["service"], r["currency"], r["kind"], r["events"], r["version"])
              for r in rows if r["id"] is None]
    applied = sum(t.events for t in totals)
    announced: list[OutboxEvent] = []
    for r in rows:
        if r["id"] is None:
            continue
        announced += crossing_events(BalanceChange(
            r["id"], r["before"], r["after"], r["low_balance_threshold"], r["currency"],
            r["version"]))
    await insert_events(conn, announced)
    return BatchResult(applied, len(batch) - applied, announced, totals)

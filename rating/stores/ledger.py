"""The usage write path: a whole rated batch debited in one PostgreSQL transaction.

Per batch: lock the accounts in sorted id order (so concurrent writers never
deadlock), insert every ledger row, unique on the event key (a redelivered event
changes nothing: see ``_ON_CONFLICT``), add each account's sum of the rows
actually inserted to its balance, and write the threshold crossings to the outbox
— all in one statement, its own transaction, which commits before any Kafka offset
does. A batch with calls of accounts holding credit reservations also settles them
in that statement (``rating.stores.settlement``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from rating.core.rate import Charge
from rating.stores import settlement
from rating.stores.accounts import SttBilling
from rating.stores.db import Connection
from rating.stores.outbox import OutboxEvent


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """What rating needs to know of an account."""

    plan_id: str
    currency: str
    stt_billing: SttBilling
    reserving: bool = False  # has open credit reservations: its calls may settle


@dataclass(frozen=True, slots=True)
class RatedUsage:
    charge: Charge
    event_time: datetime
    on_invoice: bool  # speech-to-text billed on the monthly invoice, not from credit
    # A call or toll-free event that may settle against a reservation (settlement.py).
    call_id: str | None = None
    final: bool = False


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
        "SELECT id, plan_id, currency, stt_billing, open_reservations > 0 AS reserving"
        " FROM accounts WHERE id = ANY($1::text[])",
        list(account_ids))
    return {r["id"]: AccountInfo(r["plan_id"], r["currency"], r["stt_billing"], r["reserving"])
            for r in rows}


# The whole debit is ONE statement, run on its own (an implicit transaction: one
# round trip, where BEGIN, lock, apply, outbox and COMMIT took four or five).
#
# The batch arrives as ONE json parameter (an array of row objects): orjson writes it
# in C, where binding ten typed arrays cost the engine more CPU than anything but
# decoding (asyncpg checks every array element in Python). json_to_recordset reads it
# back as typed columns (s source, i id, a account, p price, v on invoice, k service,
# c country, l plan, u currency, t time; and the rated detail, rating.core.detail:
# n number, r usage id, d direction, f from_s, e to_s, q quantity, m rate, g connect
# fee, h increment, x prefix, w plan version); amounts are JSON integers, read exactly
# as bigint. $2 is the batch's account ids, sorted.
#
# Lock order: ``locked`` takes the accounts' row locks in id order, so that
# concurrent writers never deadlock. The UPDATE joins ``lock_count``, an aggregate
# over ``locked``: a join emits no row before it has a row from each side, and the
# aggregate has none before it has read (and so locked) every row of ``locked``,
# so no account is updated before all of them are locked.
_INPUT = """
WITH input AS (
    SELECT s AS event_source, i AS event_id, a AS account_id,
           CASE WHEN v THEN 'invoice' ELSE 'usage' END AS kind,
           CASE WHEN v THEN 0 ELSE -p END AS amount,
           CASE WHEN v THEN p ELSE 0 END AS accrued,
           k AS service, c AS country, l AS plan_id, u AS currency, t AS event_time,
           n AS number, r.r AS usage_id, d AS direction, f AS from_s, e AS to_s,
           q AS quantity, m AS rate, g AS connect_fee, h AS increment, x AS prefix,
           w AS plan_version
    FROM json_to_recordset($1::json)
        AS r(s text, i text, a text, p bigint, v bool, k text, c text, l text, u text,
             t timestamptz, n text, r text, d text, f bigint, e bigint, q bigint, m bigint,
             g bigint, h text, x text, w timestamptz)
), locked AS (
    SELECT id FROM accounts WHERE id = ANY($2::text[]) ORDER BY id FOR UPDATE
), lock_count AS (
    SELECT count(*) AS n FROM locked
), inserted AS (
    INSERT INTO ledger (event_source, event_id, account_id, kind, amount, accrued, service,
                        country, plan_id, currency, event_time, number, usage_id, direction,
                        from_s, to_s, quantity, rate, connect_fee, increment, prefix,
                        plan_version)
    SELECT * FROM input
"""

# Which balance events a change announces: the rule of rating.core.thresholds, in SQL (a
# test runs both on the same values). before, after and threshold are the columns
# of the row it is joined to, laterally.
CROSSINGS_SQL = """(VALUES
        (1, 'balance.low', after < before AND before >= threshold AND threshold > after),
        (2, 'balance.exhausted', after < before AND before > 0 AND 0 >= after),
        (3, 'balance.recovered', after > before AND before < threshold AND threshold <= after)
    ) AS crossing(rank, type, crossed)"""

# Notification thresholds (balance.alert): the rule of rating.core.thresholds.alert_crossings,
# in SQL, apart from the three crossings above. Most accounts have none: the empty
# array is skipped before anything is unnested.
ALERT_CROSSINGS_SQL = """unnest(u.alerts) AS alert(threshold)
    WHERE cardinality(u.alerts) > 0 AND u.before >= alert.threshold
      AND alert.threshold > u.after"""
ALERTED_SQL = """), alerted AS (
    INSERT INTO outbox (event_id, type, account_id, balance, threshold, currency, version)
    SELECT u.id || ':' || u.version || ':balance.alert:' || alert.threshold, 'balance.alert',
           u.id, u.after, alert.threshold, u.currency, u.version
    FROM updated u, LATERAL """ + ALERT_CROSSINGS_SQL + """
    ORDER BY u.id, alert.threshold DESC
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, type, account_id, balance, threshold, currency
)"""

_SUMS = """
    RETURNING account_id, amount, accrued, service, currency, kind{returning}
){settle}, sums AS (
    SELECT account_id, sum(amount)::bigint AS total{held_sums} FROM {changes}
    GROUP BY account_id
), updated AS (
    UPDATE accounts a
    SET balance = a.balance + s.total, version = a.version + 1, updated_at = now(){held_set}
    FROM sums s, lock_count
    WHERE a.id = s.account_id AND {changed} AND lock_count.n >= 0{by_key}
    RETURNING a.id, a.balance - s.total AS before, a.balance AS after,
              a.low_balance_threshold AS threshold, a.currency, a.version,
              a.alert_thresholds AS alerts
), announced AS (
    INSERT INTO outbox (event_id, type, account_id, balance, threshold, currency, version)
    SELECT u.id || ':' || u.version || ':' || crossing.type, crossing.type, u.id, u.after,
           u.threshold, u.currency, u.version
    FROM updated u, LATERAL """ + CROSSINGS_SQL + """
    WHERE crossing.crossed
    ORDER BY u.id, crossing.rank  -- outbox order: low before exhausted, as announced
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, type, account_id, balance, threshold, currency
""" + ALERTED_SQL + """
SELECT event_id, type, account_id, balance AS amount, threshold, currency::text,
       NULL::text AS service, NULL::text AS kind, NULL::bigint AS events
FROM announced
UNION ALL
SELECT event_id, type, account_id, balance, threshold, currency::text, NULL, NULL, NULL
FROM alerted
UNION ALL
SELECT NULL, NULL, NULL, sum(accrued - amount)::bigint, NULL, currency::text, service, kind,
       count(*)
FROM inserted GROUP BY currency, service, kind
"""

# Almost every batch is new: a plain INSERT skips the speculative-insertion work of
# ON CONFLICT (about an eighth of the statement). A batch holding an event the ledger
# has already (a redelivery) fails on the unique key instead, which undoes all of it,
# and it runs again with ON CONFLICT DO NOTHING, which skips those.
_ON_CONFLICT = "    ON CONFLICT (event_source, event_id) DO NOTHING"
# The planner takes json_to_recordset for 100 rows whatever the batch, so with a
# table of a few thousand accounts it reads all of them to update a few (2.3 ms for
# a 45-event batch, 0.9 ms by key). A batch touching at most _BY_KEY_MAX_ACCOUNTS
# accounts names them ($2) as the UPDATE's index condition; a larger one is left to
# the planner, which is the faster way there (measured at 1 000 and 3 000 events on
# 10 000 accounts).
_BY_KEY = " AND a.id = ANY($2::text[])"
_BY_KEY_MAX_ACCOUNTS = 1_000
_EVENT_KEY = "ledger_event_source_event_id_key"


def _statement(*, redelivered: bool, by_key: bool, settle: bool) -> str:
    """The debit statement; ``settle`` adds the reservation settlement (settlement.py)."""
    parts = {"by_key": _BY_KEY if by_key else "", "returning": "", "settle": "",
             "held_sums": "", "changes": "inserted", "held_set": "",
             "changed": "s.total <> 0"}
    if settle:
        parts.update(returning=settlement.RETURNING_KEY if redelivered else "",
                     settle=settlement.ctes(only_inserted=redelivered),
                     held_sums=settlement.HELD_SUMS, changes=settlement.CHANGES,
                     held_set=settlement.HELD_SET, changed=settlement.CHANGED)
    return _INPUT + (_ON_CONFLICT if redelivered else "") + _SUMS.format(**parts)


# (redelivered, by key, settle) -> statement
_STATEMENTS = {(r, k, s): _statement(redelivered=r, by_key=k, settle=s)
               for r in (False, True) for k in (False, True) for s in (False, True)}


def debit_rows(batch: Sequence[RatedUsage]) -> list[dict[str, object]]:
    """The rows of ``batch`` for the debit statement's json parameter."""
    # One-letter keys (named in _INPUT) keep a 10 000-event batch near 1.5 MB
    # rather than 2.5 MB: sending it is copied a chunk at a time by the transport.
    # The rated detail's keys follow RatedDetail's fields in order; its values are read by
    # index (a charge made by hand, without a detail, stores none).
    return [
        {"s": c.source, "i": c.event_id, "a": c.account_id, "p": c.amount,
         "v": u.on_invoice, "k": c.service, "c": c.country, "l": c.plan_id,
         "u": c.currency, "t": u.event_time, "n": d[0], "r": d[1], "d": d[2], "f": d[3],
         "e": d[4], "q": d[5], "m": d[6], "g": d[7], "h": d[8], "x": d[9], "w": d[10]}
        if d is not None else
        {"s": c.source, "i": c.event_id, "a": c.account_id, "p": c.amount,
         "v": u.on_invoice, "k": c.service, "c": c.country, "l": c.plan_id,
         "u": c.currency, "t": u.event_time}
        for u in batch for c in (u.charge,) for d in (c.detail,)
    ]


@dataclass(frozen=True, slots=True)
class DebitBatch:
    """A rated batch with its statement parameter encoded, ready to debit.

    Encoding is CPU work: the usage consumer does it while the previous batch's
    debit is in flight, so the database is never kept waiting for it.
    """

    usage: Sequence[RatedUsage]
    rows_json: str
    account_ids: list[str]  # sorted: the order their rows are locked in
    settle_json: str | None = None  # settlement.settlement_json of its settling events

    @classmethod
    def of(cls, usage: Sequence[RatedUsage],
           rows: list[dict[str, object]] | None = None,
           settle: Sequence[settlement.Settlement] | None = None) -> DebitBatch:
        """``rows``, when given, must be ``debit_rows(usage)`` (built a slice at a time),
        and ``settle`` ``settlements(usage)``."""
        return cls(usage, orjson.dumps(debit_rows(usage) if rows is None else rows).decode(),
                   sorted({u.charge.account_id for u in usage}),
                   settlement.settlement_json(settlements(usage) if settle is None else settle))


def settlements(usage: Sequence[RatedUsage]) -> list[settlement.Settlement]:
    """The events of ``usage`` that may settle against a reservation."""
    return [settlement.Settlement(c.source, c.event_id, c.account_id, u.call_id, c.amount,
                                  u.final)
            for u in usage if u.call_id is not None and settlement.settles(u.call_id)
            for c in (u.charge,)]


async def apply_usage(conn: Connection, batch: Sequence[RatedUsage] | DebitBatch) -> BatchResult:
    """Debit ``batch`` exactly once, all or nothing: one statement.

    On its own the statement is its own transaction; inside a caller's transaction
    it runs in a savepoint of it.
    """
    debit = batch if isinstance(batch, DebitBatch) else DebitBatch.of(batch)
    if not debit.usage:
        return BatchResult(0, 0, [], [])
    by_key, settle = len(debit.account_ids) <= _BY_KEY_MAX_ACCOUNTS, debit.settle_json is not None
    new, redelivered = _STATEMENTS[False, by_key, settle], _STATEMENTS[True, by_key, settle]
    try:
        return await _apply(conn, debit, new)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != _EVENT_KEY:
            raise
    return await _apply(conn, debit, redelivered)


async def _apply(conn: Connection, debit: DebitBatch, statement: str) -> BatchResult:
    args: tuple[object, ...] = (debit.rows_json, debit.account_ids)
    if debit.settle_json is not None:
        args += (debit.settle_json,)
    if conn.is_in_transaction():
        async with conn.transaction():  # a savepoint: a failure undoes only this
            rows = await conn.fetch(statement, *args)
    else:
        rows = await conn.fetch(statement, *args)
    totals = [UsageTotal(r["service"], r["currency"], r["kind"], r["events"], r["amount"])
              for r in rows if r["event_id"] is None]
    announced = [OutboxEvent(r["event_id"], r["type"], r["account_id"], r["amount"],
                             r["threshold"], r["currency"])
                 for r in rows if r["event_id"] is not None]
    applied = sum(t.events for t in totals)
    return BatchResult(applied, len(debit.usage) - applied, announced, totals)

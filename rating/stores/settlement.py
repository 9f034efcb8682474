"""Settling usage against credit reservations, inside the usage batch's debit statement.

The debit statement (``rating.stores.ledger``) takes these fragments only when its
batch holds call or toll-free events of accounts that had an open reservation when
the batch was rated; every other batch runs the statement without them. A switch
reserves before it starts the call, so the call's events reach the consumer after the
reservation committed: the account lookup that precedes rating sees it.

In the statement, after every account of the batch is locked (``lock_count``): the
charges of the events actually inserted are summed per call ``(source, call_id)`` and
added to the call's open reservation on the same account (``used``), which lowers its
hold; an event with ``final: true`` closes it and frees the rest. The accounts' ``held``
and ``open_reservations`` change in the same UPDATE as their balance (``sums`` carries
them). Events of a
call without an open reservation (none, released or expired) are billed as always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from rating.core.identifiers import is_event_key

# An event's call id is kept only when it could name a reservation: the API accepts no
# longer one, and a U+0000 would fail the whole statement (PostgreSQL text cannot hold
# it).


@dataclass(frozen=True, slots=True)
class Settlement:
    """One rated call or toll-free event that may settle against a reservation."""

    source: str
    event_id: str
    account_id: str
    call_id: str
    amount: int
    final: bool


def settles(call_id: str) -> bool:
    return is_event_key(call_id)


def settlement_json(rows: Sequence[Settlement]) -> str | None:
    """The statement's third parameter; None when nothing may settle."""
    if not rows:
        return None
    return orjson.dumps([{"s": r.source, "i": r.event_id, "a": r.account_id, "x": r.call_id,
                          "p": r.amount, "f": r.final} for r in rows]).decode()


# Appended to the ledger INSERT's RETURNING when duplicates may be skipped, so that
# only the events inserted now settle.
RETURNING_KEY = ", event_source, event_id"
_ONLY_INSERTED = """
    JOIN inserted n ON n.event_source = r.s AND n.event_id = r.i"""

# $3: the settlements (json array), read as s source, i id, a account, x call id,
# p charge, f final. ``held`` is the reservation's generated column (its new value
# here); the hold before is recomputed from the values before the update.
_CTES = """, settle AS (
    SELECT r.s AS event_source, r.x AS call_id, r.a AS account_id,
           sum(r.p)::bigint AS used, bool_or(r.f) AS final
    FROM json_to_recordset($3::json) AS r(s text, i text, a text, x text, p bigint, f bool){join}
    GROUP BY r.s, r.x, r.a
), settled AS (
    UPDATE reservations v
    SET used = v.used + t.used,
        status = CASE WHEN t.final THEN 'final' ELSE v.status END,
        closed_at = CASE WHEN t.final THEN now() ELSE v.closed_at END,
        expires_at = greatest(v.expires_at, now() + v.grace_seconds * interval '1 second'),
        updated_at = now()
    FROM settle t, lock_count
    WHERE v.event_source = t.event_source AND v.call_id = t.call_id
      AND v.account_id = t.account_id AND v.status = 'open' AND lock_count.n >= 0
    RETURNING v.account_id, greatest(v.granted_amount - v.used + t.used, 0) - v.held AS freed,
              t.final::integer AS closed
)"""


def ctes(*, only_inserted: bool) -> str:
    """The CTEs that settle, placed before ``sums`` (the per-account changes)."""
    return _CTES.format(join=_ONLY_INSERTED if only_inserted else "")


# ``sums`` then adds up, per account, the charges and what the settled reservations
# freed and closed: one row per account, so the accounts UPDATE joins one relation as
# without reservations (a join of sums with a second per-account relation was planned
# as a nested loop over both, 37 million comparisons for a batch of 10 000).
CHANGES = """(
        SELECT account_id, amount, 0::bigint AS freed, 0 AS closed FROM inserted
        UNION ALL
        SELECT account_id, 0, freed, closed FROM settled) AS changes"""
HELD_SUMS = ", sum(freed)::bigint AS freed, sum(closed)::integer AS closed"
HELD_SET = (", held = a.held - s.freed,"
            " open_reservations = a.open_reservations - s.closed")
# A batch whose charges sum to zero may still free credit or close a reservation.
CHANGED = "(s.total <> 0 OR s.freed <> 0 OR s.closed <> 0)"

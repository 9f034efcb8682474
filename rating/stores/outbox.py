"""Outbox rows: balance events written in the same transaction as the change they announce."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from rating.core.money import format_amount
from rating.core.thresholds import ALERT, alert_crossings, balance_crossings
from rating.stores.db import Connection

EVENT_SOURCE = "rating-engine"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    event_id: str
    type: str
    account_id: str
    balance: int
    threshold: int | None
    currency: str
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """An account's balance before and after one committed change."""

    account_id: str
    before: int
    after: int
    threshold: int
    currency: str
    version: int
    alerts: tuple[int, ...] = ()  # the account's notification thresholds


def crossing_events(change: BalanceChange) -> list[OutboxEvent]:
    """The threshold crossings of one change, with ids stable across retries.

    ``version`` is unique per account change, so ``account:version:type`` names one
    crossing forever (``account:version:balance.alert:THRESHOLD`` for a notification
    threshold, the threshold in micro-units).
    """
    events = [
        OutboxEvent(f"{change.account_id}:{change.version}:{kind}", kind, change.account_id,
                    change.after, change.threshold, change.currency)
        for kind in balance_crossings(change.before, change.after, change.threshold)
    ]
    return events + [
        OutboxEvent(f"{change.account_id}:{change.version}:{ALERT}:{threshold}", ALERT,
                    change.account_id, change.after, threshold, change.currency)
        for threshold in alert_crossings(change.before, change.after, change.alerts)
    ]


async def insert_events(conn: Connection, events: Sequence[OutboxEvent]) -> None:
    """Insert outbox rows; a row whose id exists already is left as it is."""
    if not events:
        return
    await conn.execute(
        """
        INSERT INTO outbox (event_id, type, account_id, balance, threshold, currency, extra)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                             $6::text[], $7::jsonb[])
        ON CONFLICT (event_id) DO NOTHING
        """,
        [e.event_id for e in events], [e.type for e in events], [e.account_id for e in events],
        [e.balance for e in events], [e.threshold for e in events],
        [e.currency for e in events],
        [orjson.dumps(dict(e.extra)).decode() for e in events],
    )


def cloud_event(event_id: str, type_: str, account_id: str, balance: int,
                threshold: int | None, currency: str, extra: Mapping[str, object],
                time: datetime) -> bytes:
    """The CloudEvents 1.0 JSON of a balance event (CONTRACT §5)."""
    data: dict[str, object] = {
        "account_id": account_id,
        "balance": format_amount(balance),
        "threshold": None if threshold is None else format_amount(threshold),
        "currency": currency,
    }
    data.update(extra)
    return orjson.dumps({
        "specversion": "1.0", "id": event_id, "source": EVENT_SOURCE, "type": type_,
        "subject": account_id, "time": time.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json", "data": data,
    })

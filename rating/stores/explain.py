"""Ledger rows explained: one event's row by its key, and the JSON every reader shows.

``events show`` and ``GET /v1/events/{source}/{id}`` answer from here first (the
ledger is the truth of what was billed), then from the DLQ (CONTRACT §13).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rating.core.detail import RatedDetail, detail_json
from rating.core.errors import InvalidRequest
from rating.core.identifiers import MAX_KEY_LENGTH, is_event_key
from rating.core.money import format_amount
from rating.stores.db import Connection

# The rated detail's columns (migration 0009), in RatedDetail's order.
DETAIL_COLUMNS = ("number, usage_id, direction, from_s, to_s, quantity, rate, connect_fee,"
                  " increment, prefix, plan_version")
# Every column a reader of a ledger row is shown, detail included.
ENTRY_COLUMNS = ("entry_id, account_id, kind, service, event_source, event_id, amount, accrued,"
                 " currency, country, plan_id, reason, event_time, recorded_at, "
                 + DETAIL_COLUMNS)
# When a ledger row happened: the usage's own time, else (a credit) when it was written.
# Statements, the usage totals and the billing page all place rows in time by it.
HAPPENED_AT = "coalesce(event_time, recorded_at)"


def iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def detail_of(row: Any) -> dict[str, object] | None:
    """The stored rated detail as readers see it, or None (credits, older rows)."""
    if row["plan_version"] is None or row["service"] is None:
        return None
    detail = RatedDetail(row["number"], row["usage_id"], row["direction"], row["from_s"],
                         row["to_s"], row["quantity"], row["rate"], row["connect_fee"],
                         row["increment"], row["prefix"], row["plan_version"])
    return detail_json(row["service"], row["country"], detail)


def entry_json(row: Any) -> dict[str, object]:
    """A ledger row as the statement lists it: signed amount, accrued, and the detail."""
    return {"entry_id": row["entry_id"], "kind": row["kind"], "service": row["service"],
            "source": row["event_source"], "event_id": row["event_id"],
            "amount": format_amount(row["amount"]), "accrued": format_amount(row["accrued"]),
            "currency": row["currency"].strip(), "country": row["country"],
            "plan": row["plan_id"], "reason": row["reason"],
            "event_time": iso(row["event_time"]), "recorded_at": iso(row["recorded_at"]),
            "detail": detail_of(row)}


def applied_json(row: Any) -> dict[str, object]:
    """What ``events show`` answers for an event the ledger holds.

    ``amount`` is what the event cost, as ``rate`` prints it: for usage the price,
    whether debited from credit or accrued for the invoice (``billing`` says which);
    for a credit (top-up, recharge, adjustment) the signed amount credited.
    """
    kind = row["kind"]
    if kind in ("usage", "invoice"):
        amount = row["accrued"] if kind == "invoice" else -row["amount"]
        billing: str | None = "invoice" if kind == "invoice" else "credit"
    else:
        amount, billing = row["amount"], None
    return {"status": "applied", "account_id": row["account_id"], "service": row["service"],
            "amount": format_amount(amount), "currency": row["currency"].strip(),
            "detail": detail_of(row), "kind": kind, "billing": billing,
            "entry_id": row["entry_id"], "country": row["country"], "plan": row["plan_id"],
            "reason": row["reason"], "event_time": iso(row["event_time"]),
            "recorded_at": iso(row["recorded_at"])}


def check_event_key(source: str, event_id: str) -> None:
    """Refuse (``InvalidRequest``) a key no event can have, before it reaches a query."""
    for name, value in (("source", source), ("id", event_id)):
        if not is_event_key(value):
            raise InvalidRequest(
                f"{name}: expected 1-{MAX_KEY_LENGTH} characters without U+0000",
                code="invalid_event_key")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{name}: not valid Unicode text",
                                 code="invalid_event_key") from None


async def applied_event(conn: Connection, source: str, event_id: str) -> dict[str, object] | None:
    """The ledger's answer for the event ``(source, event_id)``, or None."""
    check_event_key(source, event_id)
    row = await conn.fetchrow(
        f"SELECT {ENTRY_COLUMNS} FROM ledger WHERE event_source = $1 AND event_id = $2",
        source, event_id)
    return None if row is None else applied_json(row)

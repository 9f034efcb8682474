"""Monthly statements: every charge and credit of a month with its detail, and the totals.

A row belongs to the month of its ``event_time`` (when the usage happened, or when
the credit was made), in UTC. Balances follow the same order: the opening balance
is the account's opening balance plus every row before the month, the closing one
adds the month's rows, so ``closing - opening`` is exactly the sum of the rows
listed. Speech-to-text billed on the invoice is listed with amount 0 and its price
as ``accrued``: owed on the monthly invoice, not taken from credit.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from rating.core.errors import InvalidRequest, UnknownAccount
from rating.core.money import format_amount
from rating.core.tariff import SERVICES
from rating.stores.explain import ENTRY_COLUMNS, HAPPENED_AT, detail_of, entry_json, iso

_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})", re.ASCII)
CREDIT_KINDS = ("topup", "recharge", "adjustment")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``"2026-11"`` -> its first instant and the next month's (UTC)."""
    match = _MONTH.fullmatch(month)
    if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1:
        raise InvalidRequest(f"month: expected YYYY-MM, got {month!r}", code="invalid_month")
    year, number = int(match[1]), int(match[2])
    start = datetime(year, number, 1, tzinfo=UTC)
    if year == 9999 and number == 12:
        raise InvalidRequest(f"month: out of range: {month!r}", code="invalid_month")
    end = datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def current_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class Statement:
    account_id: str
    currency: str
    month: str
    start: datetime
    end: datetime
    opening_balance: int
    rows: Sequence[Any]  # ledger rows (ENTRY_COLUMNS), in time order

    def service_totals(self) -> dict[str, dict[str, int]]:
        """service -> debited from credit, accrued for the invoice, events (all services)."""
        totals = {s: {"debited": 0, "accrued": 0, "events": 0} for s in SERVICES}
        for row in self.rows:
            if row["kind"] in ("usage", "invoice") and row["service"] in totals:
                total = totals[row["service"]]
                total["debited"] -= row["amount"]
                total["accrued"] += row["accrued"]
                total["events"] += 1
        return totals

    def credit_totals(self) -> dict[str, dict[str, int]]:
        totals = {k: {"amount": 0, "entries": 0} for k in CREDIT_KINDS}
        for row in self.rows:
            if row["kind"] in totals:
                totals[row["kind"]]["amount"] += row["amount"]
                totals[row["kind"]]["entries"] += 1
        return totals

    @property
    def closing_balance(self) -> int:
        return self.opening_balance + sum(int(row["amount"]) for row in self.rows)

    def as_json(self) -> dict[str, object]:
        services = self.service_totals()
        credits = self.credit_totals()
        return {
            "account_id": self.account_id, "currency": self.currency, "month": self.month,
            "from": iso(self.start), "to": iso(self.end),
            "opening_balance": format_amount(self.opening_balance),
            "closing_balance": format_amount(self.closing_balance),
            "totals": {
                "services": {s: {"debited": format_amount(t["debited"]),
                                 "accrued": format_amount(t["accrued"]),
                                 "events": t["events"]} for s, t in services.items()},
                "credits": {k: {"amount": format_amount(t["amount"]), "entries": t["entries"]}
                            for k, t in credits.items()},
                "debited": format_amount(sum(t["debited"] for t in services.values())),
                "accrued_for_invoice": format_amount(
                    sum(t["accrued"] for t in services.values())),
                "credited": format_amount(sum(t["amount"] for t in credits.values())),
            },
            "entries": [entry_json(row) for row in self.rows],
        }

    def as_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        blank = dict.fromkeys(CSV_COLUMNS, "")
        currency = self.currency
        writer.writerow({**blank, "event_time": iso(self.start), "kind": "opening_balance",
                         "amount": format_amount(self.opening_balance),
                         "currency": currency}.values())
        for row in self.rows:
            writer.writerow(_csv_entry(row, blank).values())
        for service, t in self.service_totals().items():
            writer.writerow({**blank, "kind": "total", "service": service,
                             "usage": f"{t['events']} events",
                             "amount": format_amount(-t["debited"]),
                             "accrued": format_amount(t["accrued"]),
                             "currency": currency}.values())
        for kind, c in self.credit_totals().items():
            writer.writerow({**blank, "kind": "total", "reason": kind,
                             "usage": f"{c['entries']} entries",
                             "amount": format_amount(c["amount"]),
                             "currency": currency}.values())
        writer.writerow({**blank, "event_time": iso(self.end), "kind": "closing_balance",
                         "amount": format_amount(self.closing_balance),
                         "currency": currency}.values())
        return out.getvalue()


CSV_COLUMNS = ("entry_id", "event_time", "kind", "service", "source", "event_id", "number",
               "reference", "usage", "billed", "rate", "connect_fee", "increment", "prefix",
               "country", "plan", "plan_version", "amount", "accrued", "currency", "reason")


def _csv_entry(row: Any, blank: dict[str, str]) -> dict[str, object]:
    detail = detail_of(row) or {}
    if "segments" in detail:
        usage, billed = f"{detail['segments']} segments", detail["segments"]
    elif "seconds" in detail:
        usage, billed = f"{detail['seconds']} s", detail.get("billed_seconds", "")
    elif "to_s" in detail:
        usage = f"{detail['from_s']}-{detail['to_s']} s"
        billed = detail.get("billed_seconds", "")
    else:
        usage, billed = "", ""
    return {**blank, "entry_id": row["entry_id"], "event_time": iso(row["event_time"]),
            "kind": row["kind"], "service": row["service"] or "",
            "source": row["event_source"], "event_id": row["event_id"],
            "number": detail.get("destination") or detail.get("tollfree_number") or "",
            "reference": (detail.get("call_id") or detail.get("message_id")
                          or detail.get("job_id") or ""),
            "usage": usage, "billed": billed, "rate": detail.get("rate", ""),
            "connect_fee": detail.get("connect_fee", ""),
            "increment": detail.get("increment", ""), "prefix": detail.get("prefix") or "",
            "country": row["country"] or "", "plan": row["plan_id"] or "",
            "plan_version": detail.get("effective_from", ""),
            "amount": format_amount(row["amount"]), "accrued": format_amount(row["accrued"]),
            "currency": row["currency"].strip(), "reason": row["reason"] or ""}


async def monthly_statement(pool: asyncpg.Pool, account_id: str, month: str) -> Statement:
    """The statement of ``account_id`` for ``month`` (``YYYY-MM``), read in one snapshot."""
    start, end = month_bounds(month)
    if "\x00" in account_id or not account_id.isprintable():
        raise UnknownAccount(f"unknown account {account_id!r}")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                         readonly=True):
        account = await conn.fetchrow(
            "SELECT currency, opening_balance FROM accounts WHERE id = $1", account_id)
        if account is None:
            raise UnknownAccount(f"unknown account {account_id!r}")
        before = await conn.fetchval(
            f"SELECT coalesce(sum(amount), 0)::bigint FROM ledger"
            f" WHERE account_id = $1 AND {HAPPENED_AT} < $2", account_id, start)
        rows = await conn.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM ledger"
            f" WHERE account_id = $1 AND {HAPPENED_AT} >= $2 AND {HAPPENED_AT} < $3"
            f" ORDER BY {HAPPENED_AT}, entry_id", account_id, start, end)
    return Statement(account_id, account["currency"].strip(), month, start, end,
                     account["opening_balance"] + before, rows)

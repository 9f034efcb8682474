"""An account's billing reads on the API: its saved card, one-time payments, automatic
recharges and a month of its ledger as CSV. The billing page reads through these same
functions.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

from aiohttp import web

from api.access import CUSTOMER, requires
from api.http_json import json_response
from rating.core.errors import ApiError, PaymentUnavailable
from rating.core.money import format_amount
from rating.payments.provider import PaymentMethod
from rating.stores import billing_reads
from rating.stores.accounts import AccountStore, LedgerEntry
from rating.stores.billing_reads import Recharge, RechargeState, TopupPayment
from rating.stores.topups import TopupService

CSV_COLUMNS = ("entry_id", "recorded_at", "event_time", "kind", "service", "country",
               "amount", "accrued", "currency", "source", "event_id", "reason")


def iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def card_json(method: PaymentMethod | None, today: date) -> dict[str, object]:
    if method is None:
        return {"saved": False}
    return {"saved": True, "brand": method.brand, "last4": method.last4,
            "exp_month": method.exp_month, "exp_year": method.exp_year,
            "expired": method.expired(today)}


def topup_json(t: TopupPayment) -> dict[str, object]:
    return {"idempotency_key": t.idempotency_key, "amount": format_amount(t.amount),
            "currency": t.currency.strip(), "status": t.status, "reason": t.reason,
            "created_at": iso(t.created_at), "updated_at": iso(t.updated_at)}


def recharge_json(r: Recharge | None) -> dict[str, object] | None:
    if r is None:
        return None
    return {"amount": format_amount(r.amount), "currency": r.currency.strip(),
            "status": r.status, "attempt": r.attempt, "reason": r.reason,
            "created_at": iso(r.created_at), "settled_at": iso(r.settled_at)}


def recharges_json(state: RechargeState) -> dict[str, object]:
    return {"in_flight": recharge_json(state.in_flight), "last": recharge_json(state.last)}


def _text(value: str | None) -> str:
    """A text cell a spreadsheet will not run as a formula (ids come from switches)."""
    text = value or ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_row(e: LedgerEntry) -> list[str]:
    return [str(e.entry_id), iso(e.recorded_at) or "", iso(e.event_time) or "", e.kind,
            e.service or "", _text(e.country), format_amount(e.amount),
            format_amount(e.accrued), e.currency.strip(), _text(e.event_source),
            _text(e.event_id), _text(e.reason)]


def month_query(request: web.Request) -> str:
    given = request.query.get("month")  # given but empty is not YYYY-MM: refused
    month = billing_reads.this_month() if given is None else given
    try:
        billing_reads.month_bounds(month)
    except ValueError:
        raise ApiError(400, "invalid_query", "month: expected YYYY-MM") from None
    return month


class AccountBilling:
    """The reads behind an account's billing view, and their ``/v1`` routes."""

    def __init__(self, store: AccountStore, topups: TopupService) -> None:
        self.store = store
        self.topups = topups

    def add_to(self, app: web.Application) -> None:
        account = "/v1/accounts/{account_id}"
        app.router.add_get(f"{account}/payment-method", self.get_payment_method,
                           allow_head=False, name="payment_method.read")
        app.router.add_get(f"{account}/topups", self.get_topups, allow_head=False,
                           name="topups.read")
        app.router.add_get(f"{account}/recharges", self.get_recharges, allow_head=False,
                           name="recharges.read")
        app.router.add_get(f"{account}/ledger.csv", self.get_ledger_csv, allow_head=False,
                           name="ledger.csv")

    # --- the shared reads (the account must exist: UnknownAccount otherwise) ---

    async def payment_method(self, account_id: str) -> PaymentMethod | None:
        """The saved card; ``PaymentUnavailable`` when the provider does not answer."""
        await self.store.get(account_id)
        try:
            return await self.topups.provider.payment_method(account_id)
        except Exception as exc:
            raise PaymentUnavailable(
                f"payment provider unavailable ({type(exc).__name__})") from exc

    async def recent_topups(self, account_id: str, limit: int = 10) -> list[TopupPayment]:
        await self.store.get(account_id)
        return await billing_reads.recent_topups(self.store.pool, account_id, limit)

    async def recharges(self, account_id: str) -> RechargeState:
        await self.store.get(account_id)
        return await billing_reads.recharge_state(self.store.pool, account_id)

    async def ledger_csv(self, request: web.Request, account_id: str,
                         month: str) -> web.StreamResponse:
        """The month's ledger, oldest first, written as it is read."""
        await self.store.get(account_id)
        response = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="ledger-{month}.csv"'})
        await response.prepare(request)
        async for chunk in _csv_chunks(billing_reads.month_ledger(
                self.store.pool, account_id, month)):
            await response.write(chunk)
        await response.write_eof()
        return response

    # --- /v1 routes ---

    @requires(CUSTOMER)
    async def get_payment_method(self, request: web.Request) -> web.Response:
        method = await self.payment_method(request.match_info["account_id"])
        return json_response(card_json(method, datetime.now(UTC).date()))

    @requires(CUSTOMER)
    async def get_topups(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        payments = await self.recent_topups(account_id, 50)
        return json_response({"account_id": account_id,
                              "topups": [topup_json(t) for t in payments]})

    @requires(CUSTOMER)
    async def get_recharges(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        return json_response({"account_id": account_id,
                              **recharges_json(await self.recharges(account_id))})

    @requires(CUSTOMER)
    async def get_ledger_csv(self, request: web.Request) -> web.StreamResponse:
        return await self.ledger_csv(request, request.match_info["account_id"],
                                     month_query(request))


async def _csv_chunks(entries: AsyncIterator[LedgerEntry]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    rows = 0
    async for entry in entries:
        writer.writerow(csv_row(entry))
        rows += 1
        if rows % 500 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()

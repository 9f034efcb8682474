"""The customer's billing page (CONTRACT §9): ``/billing`` and its same-origin JSON routes.

Server-rendered HTML (Jinja2) with a little JavaScript and no third-party request.
``api/access.py`` authenticates every ``/billing…`` request by the session cookie (and
the CSRF header on writes), and the audit middleware records writes as
``session:ACCOUNT``. Reads and writes go through the API's own functions: the
account store, ``TopupService.topup`` and ``AccountStore.set_auto_recharge``.
"""

from __future__ import annotations

import re
import secrets
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from api.access import (
    PAGE,
    PAGE_DATA,
    PRINCIPAL_KEY,
    PUBLIC,
    csrf_token,
    page_session_token,
    principal_of,
    requires,
)
from api.account_billing import AccountBilling, month_query
from api.billing_view import BillingView, Money, billing_view, reason_text, recharge_outcome
from api.http_json import field, json_body, json_response
from rating.core.currency import display_money, minor_units
from rating.core.errors import ApiError, IdempotencyConflict, PaymentDeclined
from rating.core.money import DECIMALS, DEFAULT_MAX_AMOUNT, parse_amount
from rating.settings import Settings
from rating.stores import billing_reads

# The page's live parts, re-rendered for each update (macros of _parts.html).
PARTS = ("balance_note", "card", "auto_status", "payments", "pay_blocked", "billing_data")
_ASSETS = {"billing.css": "text/css", "billing.js": "text/javascript"}
_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def field_error(value: object, currency: str, max_amount: int = DEFAULT_MAX_AMOUNT, *,
                zero_ok: bool = False) -> tuple[int | None, str | None]:
    """An amount typed into the page: ``(micro-units, None)`` or ``(None, message)``.

    What a customer types is money a card pays, so it is in the currency's own units
    (cents: 20.50 EUR, not 20.505); ``zero_ok`` admits 0 (a threshold, not a payment).
    """
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return None, "Enter an amount."
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None, "Enter a number, like 20 or 20.50."
    places = minor_units(currency)
    if len(match.group(1).lstrip("0")) > 20:  # more digits than any amount has
        return None, ("Enter an amount greater than zero." if text.startswith("-") else
                      f"Enter at most {display_money(max_amount, currency)}.")
    amount = parse_amount(text) if len(match.group(2) or "") <= DECIMALS else None
    if amount is None or amount % 10 ** (DECIMALS - places):
        return None, (f"Enter whole {currency} amounts, like 20." if places == 0 else
                      f"Use at most {places} decimals, like 20.50.")
    if amount < 0 or (amount == 0 and not zero_ok):
        return None, ("Enter 0 or more." if zero_ok else "Enter an amount greater than zero.")
    if amount > max_amount:
        return None, f"Enter at most {display_money(max_amount, currency)}."
    return amount, None


def _new_payment_key() -> str:
    return "page-" + secrets.token_urlsafe(16)


class BillingPage:
    def __init__(self, reads: AccountBilling, settings: Settings) -> None:
        self._reads = reads
        self._settings = settings
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("api", "templates"),
            autoescape=jinja2.select_autoescape(default=True),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self._env.globals["reason_text"] = reason_text
        self._env.globals["recharge_outcome"] = recharge_outcome
        self._assets = {name: (resources.files("api") / "static" / name).read_bytes()
                        for name in _ASSETS}

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/billing", self.page, allow_head=False, name="billing.page")
        app.router.add_get("/billing/state", self.state, allow_head=False, name="billing.state")
        app.router.add_post("/billing/pay", self.pay, name="billing.topup")
        app.router.add_put("/billing/auto-recharge", self.auto_recharge,
                           name="billing.auto_recharge.set")
        app.router.add_get("/billing/ledger.csv", self.ledger_csv, allow_head=False,
                           name="billing.ledger_csv")
        app.router.add_get("/billing/assets/{name}", self.asset, allow_head=False,
                           name="billing.asset")

    # --- rendering ---

    def _html(self, template: str, status: int = 200, **context: Any) -> web.Response:
        body = self._env.get_template(template).render(**context)
        return web.Response(text=body, status=status, content_type="text/html",
                            charset="utf-8", headers=_SECURITY_HEADERS)

    def _parts(self, view: BillingView) -> dict[str, str]:
        module = self._env.get_template("_parts.html").module
        return {name: str(getattr(module, name)(view)) for name in PARTS}

    async def _view(self, request: web.Request) -> BillingView:
        account_id = principal_of(request).account_id
        assert account_id is not None  # PAGE routes admit customer sessions only
        return await billing_view(self._reads, self._settings, account_id)

    async def _state(self, request: web.Request) -> dict[str, object]:
        view = await self._view(request)
        return {"balance": view.balance.api, "balance_text": view.balance.text,
                "currency": view.currency, "exhausted": view.exhausted,
                "negative": view.balance.micros < 0, "low": view.low,
                "pay_blocked": view.pay_blocked,
                "auto_recharge": {"enabled": view.auto.enabled,
                                  "amount": view.auto.amount_input,
                                  "below": view.auto.below_input},
                "account": view.account, "parts": self._parts(view)}

    # --- routes ---

    @requires(PAGE)
    async def page(self, request: web.Request) -> web.Response:
        if request.get(PRINCIPAL_KEY) is None:  # a wrong or expired link: no data at all
            return self._html("expired.html", 403)
        view = await self._view(request)
        token = page_session_token(request) or ""
        return self._html("billing.html", view=view, csrf=csrf_token(token),
                          pay_key=_new_payment_key(),
                          parts=self._env.get_template("_parts.html").module)

    @requires(PAGE_DATA)
    async def state(self, request: web.Request) -> web.Response:
        response = json_response(await self._state(request))
        response.headers["Cache-Control"] = "no-store"
        return response

    @requires(PAGE_DATA)
    async def pay(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        key = field(body, "idempotency_key", str)
        if not 1 <= len(key) <= 255:
            raise ApiError(400, "invalid_field", "idempotency_key: 1-255 characters")
        account_id = principal_of(request).account_id
        assert account_id is not None
        account = await self._reads.store.get(account_id)
        amount, problem = field_error(body.get("amount"), account.currency,
                                      self._settings.max_amount)
        if amount is None:
            raise ApiError(422, "invalid_amount", f"amount: {problem}")
        try:
            result = await self._reads.topups.topup(account_id, amount, key)
        except PaymentDeclined as exc:
            payment = await billing_reads.topup_payment(self._reads.store.pool, account_id, key)
            reason = payment.reason if payment is not None else None
            return json_response({"error": {
                "code": exc.code, "message": exc.message, "reason": reason,
                "reason_text": reason_text(reason)},
                "next_idempotency_key": _new_payment_key()}, 402)
        except IdempotencyConflict as exc:
            return json_response({"error": {"code": exc.code, "message": exc.message},
                                  "next_idempotency_key": _new_payment_key()}, 409)
        status = 202 if result.status == "pending" else 200
        return json_response({"status": result.status, "replay": result.replay,
                              "amount": Money(amount, account.currency).api,
                              "amount_text": Money(amount, account.currency).text,
                              "next_idempotency_key": _new_payment_key(),
                              "state": await self._state(request)}, status)

    @requires(PAGE_DATA)
    async def auto_recharge(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        account_id = principal_of(request).account_id
        assert account_id is not None
        store = self._reads.store
        if not field(body, "enabled", bool):
            await store.set_auto_recharge(account_id, amount=None, below=None)
            return json_response(await self._state(request))
        account = await store.get(account_id)
        limit = self._settings.max_amount  # RATING_MAX_AMOUNT, as on the API
        amount, amount_problem = field_error(body.get("amount"), account.currency, limit)
        below, below_problem = field_error(body.get("below"), account.currency, limit,
                                           zero_ok=True)
        if amount is None or below is None:
            problems = {name: problem for name, problem in
                        (("amount", amount_problem), ("below", below_problem)) if problem}
            return json_response({"error": {
                "code": "invalid_fields", "message": "; ".join(
                    f"{name}: {problem}" for name, problem in problems.items()),
                "fields": problems}}, 422)
        await store.set_auto_recharge(account_id, amount=amount, below=below)
        return json_response(await self._state(request))

    @requires(PAGE_DATA)
    async def ledger_csv(self, request: web.Request) -> web.StreamResponse:
        account_id = principal_of(request).account_id
        assert account_id is not None
        return await self._reads.ledger_csv(request, account_id, month_query(request))

    @requires(PUBLIC)
    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _ASSETS:
            raise ApiError(404, "not_found", "no such file")
        return web.Response(body=self._assets[name], content_type=_ASSETS[name],
                            charset="utf-8", headers={"Cache-Control": "no-cache",
                                                      "X-Content-Type-Options": "nosniff"})

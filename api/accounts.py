"""The account API (aiohttp): balances, ledger, usage, top-ups, settings, authorization.

JSON in and out; money as decimal strings. Reads are open; every write needs
``Authorization: Bearer <RATING_API_TOKEN>`` and is refused when no token is set.
Errors are ``{"error": {"code", "message"}}`` with a 4xx/5xx status (api/http_json.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web

from api.access import CUSTOMER, OPERATOR, SWITCH, Authenticator, access_control, requires
from api.account_billing import AccountBilling
from api.audit_trail import audit_writes
from api.billing_page import BillingPage
from api.deadline import read_deadlines
from api.explain import DlqSearch, ExplainRoutes
from api.http_json import (
    RETRY_AFTER_SECONDS,
    errors_as_json,
    field,
    int_query,
    json_body,
    json_response,
    since_query,
)
from api.http_metrics import request_metrics
from api.openapi_doc import openapi_document
from api.operator import OperatorRoutes
from api.recharge_fields import recharge_limits
from api.request_values import (
    Amounts,
    account_ids,
    check_authorize_query,
    idempotency_key,
    reason_field,
)
from api.reservations import ReservationApi
from rating.core.errors import ApiError
from rating.core.identifiers import credit_key
from rating.core.money import format_amount
from rating.core.quote import authorize
from rating.core.tariff import SERVICES
from rating.settings import Settings
from rating.stores.accounts import (
    AccountStore,
    LedgerEntry,
    account_json,
)
from rating.stores.recharge_settings import account_view
from rating.stores.sessions import SessionStore
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore

log = logging.getLogger(__name__)
Readiness = Callable[[], Awaitable[dict[str, bool]]]
# Beside the package in a source checkout; in the working directory in the image.
OPENAPI_CANDIDATES = (Path(__file__).resolve().parent.parent / "schemas" / "openapi.json",
                      Path("schemas") / "openapi.json")


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def entry_json(e: LedgerEntry) -> dict[str, object]:
    return {"entry_id": e.entry_id, "kind": e.kind, "service": e.service,
            "source": e.event_source, "event_id": e.event_id,
            "amount": format_amount(e.amount), "accrued": format_amount(e.accrued),
            "currency": e.currency.strip(), "country": e.country, "reason": e.reason,
            "event_time": _iso(e.event_time), "recorded_at": _iso(e.recorded_at),
            "plan": e.plan_id, "detail": e.detail}


# --- the application -------------------------------------------------------------------

class HttpApi:
    """The account API server; ``start()`` binds ``settings.http_host:http_port``."""

    def __init__(self, *, store: AccountStore, tariffs: TariffStore, topups: TopupService,
                 settings: Settings, readiness: Readiness,
                 dlq_search: DlqSearch | None = None,
                 reservations: ReservationApi | None = None) -> None:
        self._store = store
        self._dlq_search = dlq_search
        self._reservations = reservations
        self._tariffs = tariffs
        self._topups = topups
        self._settings = settings
        self._readiness = readiness
        self._sessions = SessionStore(store.pool)
        self._amounts = Amounts(settings.max_amount)
        self._runner: web.AppRunner | None = None
        self._closed = False
        self.port: int | None = None

    def app(self) -> web.Application:
        authenticator = Authenticator(operator_token=self._settings.api_token,
                                      switch_token=self._settings.switch_token,
                                      sessions=self._sessions.account_of)
        app = web.Application(
            middlewares=[request_metrics, read_deadlines(), audit_writes(self._store.pool),
                         errors_as_json,
                         access_control(authenticator, https_only=(
                             self._settings.public_url or "").startswith("https://")),
                         account_ids],
            client_max_size=64 * 1024)
        account = "/v1/accounts/{account_id}"
        app.router.add_get("/healthz", self.healthz, allow_head=False)
        app.router.add_get("/readyz", self.readyz, allow_head=False)
        app.router.add_get("/openapi.json", self.openapi, allow_head=False)
        app.router.add_get(account, self.get_account, allow_head=False, name="account.read")
        app.router.add_get(f"{account}/ledger", self.ledger, allow_head=False,
                           name="ledger.read")
        app.router.add_get(f"{account}/usage", self.usage, allow_head=False, name="usage.read")
        app.router.add_get(f"{account}/authorize", self.authorize, allow_head=False,
                           name="authorize")
        app.router.add_post(f"{account}/topups", self.topup, name="topup")
        app.router.add_put(f"{account}/auto-recharge", self.auto_recharge,
                           name="auto_recharge.set")
        app.router.add_put(f"{account}/stt-billing", self.stt_billing, name="stt_billing.set")
        app.router.add_post(f"{account}/adjustments", self.adjust, name="adjustment")
        OperatorRoutes(self._store, self._sessions, self._settings).add_to(app)
        billing = AccountBilling(self._store, self._topups)
        billing.add_to(app)
        BillingPage(billing, self._settings).add_to(app)
        ExplainRoutes(self._store.pool, self._dlq_search).add_to(app)
        if self._reservations is not None:
            self._reservations.add_routes(app.router, account)
        return app

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("HTTP API is closed")
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.http_host, self._settings.http_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> HttpApi:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # --- probes and documents ---

    async def healthz(self, _request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """Which dependency is down, by name; why is for the logs, not for the caller."""
        try:
            checks = await self._readiness()
        except Exception:
            log.exception("readiness check failed")
            checks = {}
        ready = bool(checks) and all(checks.values())
        if ready:
            return json_response({"ready": True, "checks": checks})
        down = sorted(name for name, ok in checks.items() if not ok) or ["readiness"]
        response = json_response({"ready": False, "checks": checks, "down": down}, 503)
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response

    async def openapi(self, _request: web.Request) -> web.Response:
        for path in OPENAPI_CANDIDATES:
            try:
                body = path.read_bytes()
            except OSError:
                continue
            return web.Response(body=openapi_document(body, self._settings.max_amount),
                                content_type="application/json")
        raise ApiError(404, "not_found", "openapi.json is not installed")

    # --- reads ---

    @requires(CUSTOMER)
    async def get_account(self, request: web.Request) -> web.Response:
        account = await self._store.get(request.match_info["account_id"])
        return json_response(await account_view(self._store.pool, account))

    @requires(CUSTOMER)
    async def ledger(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        limit = int_query(request, "limit", 50, 1, 500) or 50
        before = int_query(request, "before", None, 1, 2**63 - 1)
        await self._store.get(account_id)
        entries = await self._store.recent_ledger(account_id, limit, before)
        return json_response({
            "account_id": account_id, "entries": [entry_json(e) for e in entries],
            "next_before": entries[-1].entry_id if len(entries) == limit else None})

    @requires(CUSTOMER)
    async def usage(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        since = since_query(request)
        account = await self._store.get(account_id)
        totals = await self._store.usage_by_service(account_id, since)
        services = {}
        for service in SERVICES:
            debited, accrued, events, uses = totals.get(service, (0, 0, 0, 0))
            services[service] = {"debited": format_amount(debited),
                                 "accrued": format_amount(accrued), "events": events,
                                 "uses": uses}
        return json_response({"account_id": account_id, "currency": account.currency,
                              "since": _iso(since), "services": services})

    @requires(SWITCH)
    async def authorize(self, request: web.Request) -> web.Response:
        check_authorize_query(request.query)
        account = await self._store.get(request.match_info["account_id"])
        try:
            decision = authorize(account, self._tariffs.book, dict(request.query))
        except ValueError as exc:
            raise ApiError(400, "invalid_query", str(exc)) from None
        return json_response(decision)

    # --- writes ---

    @requires(CUSTOMER)
    async def topup(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        amount = self._amounts.field(body, "amount", "positive")
        key = idempotency_key(request, body)
        result = await self._topups.topup(request.match_info["account_id"], amount, key)
        status = 202 if result.status == "pending" else 201 if result.credited else 200
        return json_response({"status": result.status, "credited": result.credited,
                              "replay": result.replay, "payment_id": result.payment_id,
                              "amount": format_amount(amount),
                              "account": account_json(result.account)}, status)

    @requires(CUSTOMER)
    async def auto_recharge(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        account_id = request.match_info["account_id"]
        enabled = field(body, "enabled", bool)
        amount = below = None
        if enabled:
            amount = self._amounts.field(body, "amount", "positive")
            below = self._amounts.field(body, "below", "non_negative")
        # Optional, unchanged when absent; set before the recharge turning it on may ask.
        await recharge_limits(self._store.pool, account_id, body)
        account = await self._store.set_auto_recharge(account_id, amount=amount, below=below)
        return json_response(await account_view(self._store.pool, account))

    @requires(OPERATOR)
    async def stt_billing(self, request: web.Request) -> web.Response:
        mode = field(await json_body(request), "mode", str)
        if mode not in ("credit", "invoice"):
            raise ApiError(422, "invalid_mode", "mode: expected 'credit' or 'invoice'")
        account = await self._store.set_stt_billing(request.match_info["account_id"], mode)
        return json_response(account_json(account))

    @requires(OPERATOR)
    async def adjust(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        amount = self._amounts.field(body, "amount", "non_zero")
        reason = reason_field(body)
        key = idempotency_key(request, body)
        account_id = request.match_info["account_id"]
        result = await self._store.credit(account_id, kind="adjustment", source="adjustment",
                                          key=credit_key(account_id, key), amount=amount,
                                          reason=reason)
        return json_response({"applied": result.applied, "entry_id": result.entry_id,
                              "account": account_json(result.account)},
                             201 if result.applied else 200)

"""The account API over real HTTP against real PostgreSQL: every endpoint, its errors,
authentication, idempotent top-ups and the authorization arithmetic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from jsonschema import Draft202012Validator

from api.accounts import OPENAPI_CANDIDATES, HttpApi
from api.reservations import ReservationApi
from rating.core.detail import RatedDetail
from rating.core.events import Service
from rating.core.money import parse_amount
from rating.core.pricing import Increment, TimedRate, cost, seconds_covered
from rating.core.rate import Charge
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from rating.stores.recharges import RechargePolicy
from rating.stores.reservations import ReservationStore
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore
from tests.support import write_flat_tariffs

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOC = orjson.loads(OPENAPI_CANDIDATES[0].read_bytes())


def assert_matches(body: object, schema: str) -> None:
    """``body`` is valid against ``#/components/schemas/<schema>`` of schemas/openapi.json."""
    Draft202012Validator({**DOC, "$ref": f"#/components/schemas/{schema}"}).validate(body)


@pytest.fixture
def tariffs_dir(tmp_path: Path) -> Path:
    return write_flat_tariffs(tmp_path / "tariffs")


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    provider: SimulatedProvider
    ready: dict[str, bool]
    pool: asyncpg.Pool

    async def call(self, method: str, path: str, body: object = None, *,
                   headers: dict[str, str] | None = None, raw: bytes | None = None,
                   ) -> tuple[int, Any]:
        """Sends the operator's token unless ``headers`` are given (``{}``: none at all)."""
        data = raw if raw is not None else None if body is None else orjson.dumps(body)
        async with self.http.request(method, self.url + path, data=data,
                                     headers=AUTH if headers is None else headers) as response:
            assert response.content_type == "application/json"
            return response.status, orjson.loads(await response.read())


async def start_api(settings: Settings, pool: asyncpg.Pool, tariffs_dir: Path,
                    provider: SimulatedProvider, ready: dict[str, bool]) -> HttpApi:
    async def readiness() -> dict[str, bool]:
        return dict(ready)

    tariffs = TariffStore(tariffs_dir)
    reservations = ReservationStore(pool, cap_seconds=settings.reservation_seconds,
                                    grace_seconds=settings.reservation_grace_seconds)
    api = HttpApi(store=AccountStore(pool), tariffs=tariffs,
                  topups=TopupService(pool, provider, RechargePolicy(settle_poll_s=0.1)),
                  settings=settings, readiness=readiness,
                  reservations=ReservationApi(reservations, tariffs))
    await api.start()
    return api


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool, tariffs_dir: Path) -> AsyncIterator[Api]:
    configured = replace(settings, api_token=TOKEN, http_host="127.0.0.1", http_port=0)
    provider = SimulatedProvider()
    ready = {"postgresql": True, "kafka": True}
    server = await start_api(configured, pool, tariffs_dir, provider, ready)
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "flat", "EUR", parse_amount("1.00"),
                                  parse_amount("0.50")))
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{server.port}", http, provider, ready, pool)
    await server.close()
    await server.close()  # safe twice


async def usage(pool: asyncpg.Pool, event_id: str, service: Service, amount: str,
                *, on_invoice: bool = False) -> None:
    charge = Charge(event_id, "sw", "acct-1", service, "GB", parse_amount(amount), "EUR", "flat")
    async with pool.acquire() as conn, conn.transaction():
        await apply_usage(conn, [RatedUsage(charge, datetime.now(UTC), on_invoice)])


async def test_probes_and_the_openapi_document(api: Api) -> None:
    assert await api.call("GET", "/healthz") == (200, {"status": "ok"})
    assert await api.call("GET", "/readyz") == (
        200, {"ready": True, "checks": {"postgresql": True, "kafka": True}})
    api.ready["kafka"] = False
    status, body = await api.call("GET", "/readyz")
    assert status == 503 and body["checks"] == {"postgresql": True, "kafka": False}
    assert body["ready"] is False
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert {"/healthz", "/readyz", "/openapi.json", "/v1/accounts/{account_id}",
            "/v1/accounts/{account_id}/ledger", "/v1/accounts/{account_id}/usage",
            "/v1/accounts/{account_id}/topups", "/v1/accounts/{account_id}/auto-recharge",
            "/v1/accounts/{account_id}/stt-billing", "/v1/accounts/{account_id}/adjustments",
            "/v1/accounts/{account_id}/authorize", "/v1/accounts/{account_id}/sessions",
            "/v1/accounts/{account_id}/audit", "/v1/audit",
            "/v1/accounts/{account_id}/payment-method", "/v1/accounts/{account_id}/recharges",
            "/v1/accounts/{account_id}/ledger.csv",
            "/v1/accounts/{account_id}/statement", "/v1/events/{source}/{event_id}",
            "/v1/accounts/{account_id}/reservations",
            "/v1/accounts/{account_id}/reservations/{reservation_id}",
            "/v1/accounts/{account_id}/reservations/{reservation_id}/extend",
            } == set(doc["paths"])
    assert "Error" in doc["components"]["schemas"]


async def test_accounts_unknown_ids_routes_and_methods(api: Api) -> None:
    status, body = await api.call("GET", "/v1/accounts/acct-1")
    assert status == 200 and body["balance"] == "1.000000" and body["plan"] == "flat"
    assert_matches(body, "Account")
    for method, path in [("GET", "/v1/accounts/nobody"), ("GET", "/v1/accounts/nobody/ledger"),
                         ("GET", "/v1/accounts/nobody/usage"),
                         ("GET", "/v1/accounts/nobody/authorize?service=stt")]:
        status, body = await api.call(method, path)
        assert status == 404 and body["error"]["code"] == "unknown_account", path
        assert_matches(body, "Error")
    status, body = await api.call("GET", "/v1/nothing-here")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await api.call("DELETE", "/v1/accounts/acct-1")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    status, body = await api.call("POST", "/v1/accounts/nobody/topups",
                                  {"amount": "1.00", "idempotency_key": "k"}, headers=AUTH)
    assert (status, body["error"]["code"]) == (404, "unknown_account")


async def test_every_v1_call_needs_a_credential(
        api: Api, settings: Settings, pool: asyncpg.Pool, tariffs_dir: Path) -> None:
    calls = [("POST", "/v1/accounts/acct-1/topups", {"amount": "1", "idempotency_key": "k"}),
             ("PUT", "/v1/accounts/acct-1/auto-recharge", {"enabled": False}),
             ("PUT", "/v1/accounts/acct-1/stt-billing", {"mode": "invoice"}),
             ("POST", "/v1/accounts/acct-1/adjustments",
              {"amount": "1", "reason": "r", "idempotency_key": "k"}),
             ("GET", "/v1/accounts/acct-1", None), ("GET", "/v1/accounts/acct-1/ledger", None),
             ("GET", "/v1/accounts/acct-1/usage", None),
             ("GET", "/v1/accounts/acct-1/authorize?service=stt", None),
             ("GET", "/v1/accounts/nobody", None), ("GET", "/v1/audit", None),
             ("POST", "/v1/accounts/acct-1/sessions", {})]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        for method, path, body in calls:
            status, answer = await api.call(method, path, body, headers=headers)
            assert (status, answer["error"]["code"]) == (401, "unauthorized"), (path, headers)
    status, account = await api.call("GET", "/v1/accounts/acct-1")
    assert status == 200
    assert account["balance"] == "1.000000" and account["stt_billing"] == "credit"
    assert api.provider.charge_calls == 0
    for open_path in ("/healthz", "/openapi.json"):
        assert (await api.call("GET", open_path, headers={}))[0] == 200

    unset = replace(settings, api_token=None, http_host="127.0.0.1", http_port=0)
    server = await start_api(unset, pool, tariffs_dir, SimulatedProvider(), {})
    try:
        async with api.http.post(f"http://127.0.0.1:{server.port}/v1/accounts/acct-1/topups",
                                 data=b'{"amount": "1", "idempotency_key": "k"}',
                                 headers=AUTH) as response:
            body = orjson.loads(await response.read())
        assert response.status == 401 and body["error"]["code"] == "unauthorized"
    finally:
        await server.close()


async def test_malformed_bodies_and_invalid_values(api: Api) -> None:
    topups = "/v1/accounts/acct-1/topups"
    cases: list[tuple[bytes, int, str]] = [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"amount": 10.5, "idempotency_key": "k"}', 400, "invalid_field"),
        (b'{"amount": "ten", "idempotency_key": "k"}', 400, "invalid_amount"),
        (b'{"amount": "1.0000001", "idempotency_key": "k"}', 400, "invalid_amount"),
        (b'{"idempotency_key": "k"}', 400, "missing_field"),
        (b'{"amount": "1.00"}', 400, "missing_field"),
        (b'{"amount": "0", "idempotency_key": "k"}', 422, "invalid_amount"),
        (b'{"amount": "-5", "idempotency_key": "k"}', 422, "invalid_amount"),
    ]
    for raw, status, code in cases:
        got, body = await api.call("POST", topups, raw=raw, headers=AUTH)
        assert (got, body["error"]["code"]) == (status, code), raw
    status, body = await api.call("POST", topups, raw=b"x" * 100_000, headers=AUTH)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert api.provider.charge_calls == 0
    assert (await api.call("GET", "/v1/accounts/acct-1"))[1]["balance"] == "1.000000"


async def test_topups_credit_once_per_key_and_report_pending_and_declines(api: Api) -> None:
    path = "/v1/accounts/acct-1/topups"
    status, first = await api.call("POST", path, {"amount": "10.00", "idempotency_key": "t1"},
                                   headers=AUTH)
    assert status == 201 and first["credited"] is True and first["status"] == "succeeded"
    assert first["account"]["balance"] == "11.000000"
    assert_matches(first, "TopupResult")
    status, replay = await api.call("POST", path, {"amount": "10.00"},
                                    headers={**AUTH, "Idempotency-Key": "t1"})
    assert status == 200 and replay["credited"] is False and replay["replay"] is True
    assert replay["account"]["balance"] == "11.000000"
    status, conflict = await api.call("POST", path, {"amount": "12.00", "idempotency_key": "t1"},
                                      headers=AUTH)
    assert (status, conflict["error"]["code"]) == (409, "idempotency_conflict")
    status, _ = await api.call("POST", path, {"amount": "1", "idempotency_key": "a"},
                                      headers={**AUTH, "Idempotency-Key": "b"})
    assert status == 400

    api.provider.set_behaviour("decline")
    status, declined = await api.call("POST", path, {"amount": "5", "idempotency_key": "t2"},
                                      headers=AUTH)
    assert (status, declined["error"]["code"]) == (402, "payment_declined")
    api.provider.set_behaviour("delay:60")
    status, pending = await api.call("POST", path, {"amount": "5", "idempotency_key": "t3"},
                                     headers=AUTH)
    assert status == 202 and pending["status"] == "pending" and pending["credited"] is False
    status, again = await api.call("POST", path, {"amount": "5", "idempotency_key": "t3"},
                                   headers=AUTH)
    assert status == 202 and again["payment_id"] == pending["payment_id"]

    assert (await api.call("GET", "/v1/accounts/acct-1"))[1]["balance"] == "11.000000"
    assert [p.amount for p in api.provider.captured()] == [parse_amount("10.00")]
    assert len(api.provider.payments) == 3


async def test_auto_recharge_and_stt_billing_settings(api: Api) -> None:
    path = "/v1/accounts/acct-1/auto-recharge"
    status, body = await api.call("PUT", path, {"enabled": True, "amount": "20.00",
                                                "below": "5.00"}, headers=AUTH)
    assert status == 200
    assert body["auto_recharge"] == {"enabled": True, "amount": "20.000000", "below": "5.000000",
                                     "max_per_day": 5, "disabled_reason": None,
                                     "disabled_at": None}
    assert body["low_balance_threshold"] == "5.000000"
    # The balance (1.00) is already below: a recharge is requested for the worker to send.
    assert await api.pool.fetchval(
        "SELECT count(*) FROM recharges WHERE account_id = 'acct-1' AND status = 'requested'"
    ) == 1
    status, body = await api.call("PUT", path, {"enabled": False}, headers=AUTH)
    assert status == 200 and body["auto_recharge"]["enabled"] is False
    for payload, expected in [({"enabled": "yes"}, 400), ({"enabled": True}, 400),
                              ({"enabled": True, "amount": "0", "below": "5"}, 422),
                              ({"enabled": True, "amount": "20", "below": "-1"}, 422)]:
        assert (await api.call("PUT", path, payload, headers=AUTH))[0] == expected, payload

    path = "/v1/accounts/acct-1/stt-billing"
    status, body = await api.call("PUT", path, {"mode": "invoice"}, headers=AUTH)
    assert status == 200 and body["stt_billing"] == "invoice"
    assert (await api.call("PUT", path, {"mode": "paper"}, headers=AUTH))[0] == 422
    assert (await api.call("PUT", path, {"mode": 1}, headers=AUTH))[0] == 400


async def test_adjustments_are_signed_reasoned_and_idempotent(api: Api) -> None:
    path = "/v1/accounts/acct-1/adjustments"
    body = {"amount": "-0.25", "reason": "duplicate call billed", "idempotency_key": "adj-1"}
    status, first = await api.call("POST", path, body, headers=AUTH)
    assert status == 201 and first["applied"] is True
    assert first["account"]["balance"] == "0.750000"
    status, replay = await api.call("POST", path, body, headers=AUTH)
    assert status == 200 and replay["applied"] is False
    assert replay["account"]["balance"] == "0.750000"
    for payload, expected in [({"amount": "0", "reason": "x", "idempotency_key": "a2"}, 422),
                              ({"amount": "1", "reason": "  ", "idempotency_key": "a3"}, 422),
                              ({"amount": "1", "idempotency_key": "a4"}, 400),
                              ({**body, "amount": "-0.30"}, 409)]:
        assert (await api.call("POST", path, payload, headers=AUTH))[0] == expected, payload
    status, conflict = await api.call("POST", path, {**body, "amount": "-0.30"}, headers=AUTH)
    # The key as the operator gave it, not the ledger's account/key form.
    assert conflict["error"]["message"] == (
        "idempotency key 'adj-1' was already used for a different request")


async def test_ledger_pages_newest_first_with_decimal_strings(api: Api) -> None:
    for n in range(5):
        await usage(api.pool, f"u{n}", "call", f"0.0{n + 1}")
    status, page = await api.call("GET", "/v1/accounts/acct-1/ledger?limit=3")
    assert status == 200 and [e["event_id"] for e in page["entries"]] == ["u4", "u3", "u2"]
    assert page["entries"][0]["amount"] == "-0.050000" and page["entries"][0]["kind"] == "usage"
    assert_matches(page, "Ledger")
    status, rest = await api.call(
        "GET", f"/v1/accounts/acct-1/ledger?limit=3&before={page['next_before']}")
    assert [e["event_id"] for e in rest["entries"]] == ["u1", "u0"]
    assert rest["next_before"] is None
    for query in ("limit=0", "limit=501", "limit=x", "before=-1"):
        assert (await api.call("GET", f"/v1/accounts/acct-1/ledger?{query}"))[0] == 400, query


async def test_usage_is_broken_down_by_service(api: Api) -> None:
    await usage(api.pool, "c1", "call", "0.10")
    await usage(api.pool, "c2", "call", "0.20")
    await usage(api.pool, "s1", "sms", "0.05")
    await usage(api.pool, "t1", "stt", "0.03", on_invoice=True)
    status, body = await api.call("GET", "/v1/accounts/acct-1/usage")
    assert status == 200
    assert_matches(body, "Usage")
    assert body["services"] == {
        "call": {"debited": "0.300000", "accrued": "0.000000", "events": 2, "uses": 2},
        "tollfree": {"debited": "0.000000", "accrued": "0.000000", "events": 0, "uses": 0},
        "sms": {"debited": "0.050000", "accrued": "0.000000", "events": 1, "uses": 1},
        "stt": {"debited": "0.000000", "accrued": "0.030000", "events": 1, "uses": 1}}
    status, later = await api.call("GET", "/v1/accounts/acct-1/usage?since=2999-01-01T00:00:00Z")
    assert status == 200 and later["services"]["call"]["events"] == 0
    assert (await api.call("GET", "/v1/accounts/acct-1/usage?since=yesterday"))[0] == 400


async def test_usage_counts_a_call_once_and_places_it_by_when_it_happened(api: Api) -> None:
    october = datetime(2026, 10, 15, 10, 0, tzinfo=UTC)

    def minute(event_id: str, call_id: str, from_s: int) -> RatedUsage:
        detail = RatedDetail("+442071234567", call_id, None, from_s, from_s + 60, 60,
                             100_000, 0, "60/60", "44", october)
        return RatedUsage(Charge(event_id, "sw", "acct-1", "call", "GB", 100_000, "EUR",
                                 "standard", detail), october, False, call_id)

    async with api.pool.acquire() as conn, conn.transaction():
        # One call sent as two events, billed late (today) for usage of mid-October.
        await apply_usage(conn, [minute("e1", "c-9", 0), minute("e2", "c-9", 60)])
    status, body = await api.call("GET", "/v1/accounts/acct-1/usage")
    assert status == 200 and body["services"]["call"] == {
        "debited": "0.200000", "accrued": "0.000000", "events": 2, "uses": 1}
    # since= is by when the usage happened, not when it was billed.
    for since, events in (("2026-10-01T00:00:00Z", 2), ("2026-10-16T00:00:00Z", 0)):
        status, body = await api.call("GET", f"/v1/accounts/acct-1/usage?since={since}")
        assert status == 200 and body["services"]["call"]["events"] == events, since


async def test_authorize_gives_the_seconds_the_balance_covers(api: Api) -> None:
    base = "/v1/accounts/acct-1/authorize?service="
    landline = TimedRate(100_000, 0, Increment(60, 60))
    status, body = await api.call("GET", base + "call&destination=%2B442071234567")
    assert status == 200 and body["allowed"] is True
    assert body["max_seconds"] == 600 == seconds_covered(parse_amount("1.00"), landline)
    assert body["rate"] == {"per_minute": "0.100000", "connect_fee": "0.000000",
                            "increment": "60/60"}
    assert_matches(body, "Authorization")
    # mobile prefix: 0.05 connect, 0.30/min, 30/6 -> 186 s cost 0.98, 187 s would cost 1.01
    status, body = await api.call("GET", base + "call&destination=+447400123456")
    assert body["max_seconds"] == 186
    mobile_rate = TimedRate(300_000, 50_000, Increment(30, 6))
    assert cost(186, mobile_rate) <= parse_amount("1.00") < cost(187, mobile_rate)
    status, body = await api.call("GET", base + "call&destination=%2B81312345678")
    assert status == 200 and body["allowed"] is False and body["reason"] == "no_rate"
    status, body = await api.call("GET", base + "tollfree&number=%2B448001234567"
                                  "&direction=outbound")
    assert (body["allowed"], body["max_seconds"]) == (True, 1500)
    status, body = await api.call("GET", base + "sms&destination=%2B442071234567")
    assert (body["allowed"], body["max_segments"], body["max_seconds"]) == (True, 20, None)
    status, body = await api.call("GET", base + "stt")
    assert (body["allowed"], body["max_seconds"], body["billing"]) == (True, 2490, "credit")

    await api.call("POST", "/v1/accounts/acct-1/adjustments",
                   {"amount": "-1.00", "reason": "spent", "idempotency_key": "z"}, headers=AUTH)
    status, body = await api.call("GET", base + "call&destination=%2B442071234567")
    assert (body["allowed"], body["max_seconds"], body["balance"]) == (False, 0, "0.000000")
    await api.call("PUT", "/v1/accounts/acct-1/stt-billing", {"mode": "invoice"}, headers=AUTH)
    status, body = await api.call("GET", base + "stt")
    assert (body["allowed"], body["max_seconds"], body["billing"]) == (True, None, "invoice")

    for query in ("", "fax", "call", "call&destination=12ab", "tollfree&number=%2B448001234567"
                  "&direction=sideways"):
        status, body = await api.call("GET", base + query)
        assert (status, body["error"]["code"]) == (400, "invalid_query"), query

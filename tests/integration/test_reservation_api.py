"""CONTRACT §10 over real HTTP: reserve (201 / 200 again / 402), extend, release, the
switch credential, bad requests as 4xx JSON, authorize from the available credit, the
OpenAPI document, and a vanished switch whose reservations expire and give the credit
back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from consumers.reservation_sweeper import ReservationSweeper
from rating.core.money import parse_amount
from rating.core.pricing import Increment, TimedRate, cost
from rating.core.rate import Charge
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from rating.stores.reservations import CallLeg, ReservationStore
from tests.integration.test_http_api import DOC, TOKEN, Api, assert_matches, start_api
from tests.support import ledger_explains_balances, wait_until, write_flat_tariffs

SWITCH_TOKEN = "switch-secret"
SWITCH = {"Authorization": f"Bearer {SWITCH_TOKEN}"}
BASE = "/v1/accounts/acct-1/reservations"
CALL = {"source": "switch-eu-1", "call_id": "c-9", "service": "call",
        "destination": "+442071234567"}  # flat plan: 0.10 per minute, 60/60


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Api]:
    configured = replace(settings, api_token=TOKEN, switch_token=SWITCH_TOKEN,
                         http_host="127.0.0.1", http_port=0, reservation_seconds=300,
                         reservation_grace_seconds=60)
    server = await start_api(configured, pool, write_flat_tariffs(tmp_path / "tariffs"),
                             SimulatedProvider(), {"postgresql": True})
    await AccountStore(pool).create(NewAccount("acct-1", "flat", "EUR", parse_amount("1.00")))
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{server.port}", http, SimulatedProvider(), {}, pool)
    await server.close()


def documented(path: str, method: str, status: int) -> bool:
    """Whether schemas/openapi.json lists this status for the route."""
    return str(status) in DOC["paths"][path][method]["responses"]


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_reserve_extend_release_as_a_voice_switch(api: Api) -> None:
    refused_before = sample("rating_reservation_grants_refused_total", {"operation": "extend"})
    status, body = await api.call("POST", BASE, CALL, headers=SWITCH)
    assert status == 201, body
    assert_matches(body, "Reservation")
    assert body["granted_seconds"] == 300 and body["held"] == "0.500000"
    assert body["currency"] == "EUR" and body["status"] == "open"
    assert body["available"] == "0.500000" and body["expires_at"].endswith("Z")
    rid = body["reservation_id"]
    status, again = await api.call("POST", BASE, CALL, headers=SWITCH)
    assert status == 200 and again["reservation_id"] == rid and again["held"] == "0.500000"
    # authorize and the account answer from the available credit.
    status, quote = await api.call(
        "GET", "/v1/accounts/acct-1/authorize?service=call&destination=%2B442071234567",
        headers=SWITCH)
    assert status == 200 and quote["max_seconds"] == 300
    assert (quote["balance"], quote["held"], quote["available"]) == (
        "1.000000", "0.500000", "0.500000")
    assert_matches(quote, "Authorization")
    status, account = await api.call("GET", "/v1/accounts/acct-1")
    assert (account["held"], account["available"]) == ("0.500000", "0.500000")
    assert_matches(account, "Account")
    # Extend: the rest of the credit (five minutes), the total granted is 600 s.
    status, extended = await api.call("POST", f"{BASE}/{rid}/extend", headers=SWITCH)
    assert status == 200 and extended["granted_seconds"] == 600
    assert extended["held"] == "1.000000" and extended["available"] == "0.000000"
    assert_matches(extended, "Reservation")
    status, body = await api.call("POST", f"{BASE}/{rid}/extend", headers=SWITCH)
    assert (status, body["error"]["code"]) == (402, "insufficient_credit")
    assert sample("rating_reservation_grants_refused_total",
                  {"operation": "extend"}) == refused_before + 1
    status, shown = await api.call("GET", f"{BASE}/{rid}", headers=SWITCH)
    assert status == 200 and shown["granted_seconds"] == 600 and "available" not in shown
    # Release: everything is available again; releasing twice changes nothing.
    status, released = await api.call("DELETE", f"{BASE}/{rid}", headers=SWITCH)
    assert status == 200 and released["status"] == "released" and released["held"] == "0.000000"
    assert released["available"] == "1.000000"
    status, again = await api.call("DELETE", f"{BASE}/{rid}", headers=SWITCH)
    assert status == 200 and again["status"] == "released"
    status, body = await api.call("POST", f"{BASE}/{rid}/extend", headers=SWITCH)
    assert (status, body["error"]["code"]) == (409, "reservation_closed")
    assert "a new call_id" in body["error"]["message"]
    # The same call reserved again: the same reservation, holding nothing, over when it
    # closed (not at the expiry it had while open).
    status, closed = await api.call("POST", BASE, CALL, headers=SWITCH)
    assert status == 200 and closed["reservation_id"] == rid
    assert (closed["status"], closed["held"]) == ("released", "0.000000")
    assert closed["expires_at"] == closed["closed_at"] is not None
    assert closed["expires_at"] < extended["expires_at"]
    assert_matches(closed, "Reservation")
    assert documented("/v1/accounts/{account_id}/reservations/{reservation_id}/extend", "post",
                      409)
    # Reservations are not audit material (their rows are their record).
    assert await api.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action LIKE 'reservation%'") == 0


async def test_no_credit_no_grant(api: Api) -> None:
    await api.pool.execute("UPDATE accounts SET balance = 50000, opening_balance = 50000")
    status, body = await api.call("POST", BASE, CALL, headers=SWITCH)
    assert (status, body["error"]["code"]) == (402, "insufficient_credit")
    # Money in the message as the API shows it everywhere, never in micro-units.
    assert body["error"]["message"].startswith("available credit 0.050000 does not cover")
    assert_matches(body, "Error")
    assert await api.pool.fetchval("SELECT held FROM accounts") == 0
    assert await api.pool.fetchval("SELECT count(*) FROM reservations") == 0
    assert documented("/v1/accounts/{account_id}/reservations", "post", 402)


async def test_inbound_toll_free_minutes_are_reserved_too(api: Api) -> None:
    await api.pool.execute(
        "UPDATE accounts SET balance = 1000000, opening_balance = 1000000")
    # The flat plan prices GB toll-free inbound at 0.02 and outbound at 0.04 per minute.
    legs = [("inbound", "0.100000"), ("outbound", "0.200000")]
    for n, (direction, held) in enumerate(legs):
        status, body = await api.call("POST", BASE, {
            "source": "sw", "call_id": f"tf-{n}", "service": "tollfree",
            "tollfree_number": "+448001234567", "direction": direction}, headers=SWITCH)
        assert status == 201, body
        assert (body["held"], body["direction"], body["service"]) == (held, direction,
                                                                      "tollfree")
        assert body["tollfree_number"] == "+448001234567" and "destination" not in body
    assert await api.pool.fetchval("SELECT held FROM accounts") == 300_000


@pytest.mark.parametrize(("body", "status", "code"), [
    ({**CALL, "service": "sms"}, 400, "invalid_field"),
    ({k: v for k, v in CALL.items() if k != "call_id"}, 400, "missing_field"),
    ({**CALL, "call_id": ""}, 400, "invalid_field"),
    ({**CALL, "call_id": "x" * 257}, 400, "invalid_field"),
    ({**CALL, "source": "a\x00b"}, 400, "invalid_field"),
    ({**CALL, "source": "topup"}, 400, "invalid_field"),  # the engine's own credits
    ({**CALL, "source": 7}, 400, "invalid_field"),
    ({**CALL, "destination": "442071234567"}, 400, "invalid_field"),
    ({**CALL, "destination": "+8823401234567"}, 422, "no_rate"),
    ({"source": "s", "call_id": "c", "service": "tollfree", "tollfree_number": "+448001234567"},
     400, "missing_field"),
    ({"source": "s", "call_id": "c", "service": "tollfree", "tollfree_number": "+448001234567",
      "direction": "sideways"}, 400, "invalid_field"),
    ([CALL], 400, "invalid_json"),
])
async def test_bad_reservation_requests_are_4xx_json(
        api: Api, body: object, status: int, code: str) -> None:
    got, answer = await api.call("POST", BASE, body, headers=SWITCH)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert_matches(answer, "Error")
    assert documented("/v1/accounts/{account_id}/reservations", "post", status)
    assert await api.pool.fetchval("SELECT count(*) FROM reservations") == 0


async def test_unknown_things_and_credentials(api: Api) -> None:
    cases = [
        ("POST", "/v1/accounts/nobody/reservations", CALL, 404, "unknown_account"),
        ("POST", "/v1/accounts/nobody%00x/reservations", CALL, 404, "unknown_account"),
        ("POST", f"{BASE}/not-a-reservation/extend", None, 404, "unknown_reservation"),
        ("DELETE", f"{BASE}/00000000-0000-4000-8000-000000000000", None, 404,
         "unknown_reservation"),
        ("GET", f"{BASE}/%00", None, 404, "unknown_reservation"),
        ("PUT", BASE, CALL, 405, "method_not_allowed"),
    ]
    for method, path, body, status, code in cases:
        got, answer = await api.call(method, path, body, headers=SWITCH)
        assert (got, answer["error"]["code"]) == (status, code), (method, path, answer)
    got, answer = await api.call("POST", BASE, CALL, headers={})
    assert (got, answer["error"]["code"]) == (401, "unauthorized")
    status, session = await api.call("POST", "/v1/accounts/acct-1/sessions", {})
    customer = {"Authorization": f"Bearer {session['token']}"}
    got, answer = await api.call("POST", BASE, CALL, headers=customer)
    assert (got, answer["error"]["code"]) == (403, "forbidden")
    # Another account's reservation is not found through this one.
    await AccountStore(api.pool).create(NewAccount("acct-2", "flat", "EUR", 10**6))
    status, body = await api.call("POST", "/v1/accounts/acct-2/reservations",
                                  {**CALL, "call_id": "c-2"}, headers=SWITCH)
    assert status == 201
    got, answer = await api.call("DELETE", f"{BASE}/{body['reservation_id']}", headers=SWITCH)
    assert (got, answer["error"]["code"]) == (404, "unknown_reservation")
    # The same call reserved for another account or another number: a conflict.
    got, answer = await api.call("POST", BASE, {**CALL, "call_id": "c-2"}, headers=SWITCH)
    assert (got, answer["error"]["code"]) == (409, "idempotency_conflict")


async def test_a_vanished_switchs_reservations_expire_and_the_credit_comes_back(
        api: Api) -> None:
    store = ReservationStore(api.pool, cap_seconds=2, grace_seconds=1)
    sweeper = ReservationSweeper(store, interval_s=0.2)
    expired_before = sample("rating_reservations_expired_total")
    task = asyncio.create_task(sweeper.run())
    try:
        rate = TimedRate(100_000, 0, Increment(60, 60))
        reservations = []
        for n in range(3):  # the switch starts three calls, then is gone
            outcome = await store.reserve("acct-1", _leg(f"lost-{n}"), lambda _plan: rate)
            reservations.append(outcome.reservation)
        assert await api.pool.fetchval("SELECT held FROM accounts") == 3 * cost(2, rate)
        await wait_until(_no_holds(api.pool), timeout_s=20, what="the holds to expire")
        assert sample("rating_reservations_expired_total") == expired_before + 3
        await wait_until(lambda: _gauge_is("rating_reservations_open", 0.0), timeout_s=5,
                         what="the open-reservations gauge")
        status, body = await api.call("GET", f"{BASE}/{reservations[0].reservation_id}",
                                      headers=SWITCH)
        assert status == 200 and body["status"] == "expired" and body["held"] == "0.000000"
        status, quote = await api.call(
            "GET", "/v1/accounts/acct-1/authorize?service=call&destination=%2B442071234567",
            headers=SWITCH)
        assert quote["available"] == quote["balance"] == "1.000000"
        # The calls happened: their late usage is still billed.
        charge = Charge("late-1", "switch-gone", "acct-1", "call", "GB", 100_000, "EUR", "flat")
        async with api.pool.acquire() as conn:
            await apply_usage(conn, [RatedUsage(charge, datetime.now(UTC), False, "lost-0",
                                                True)])
        assert await api.pool.fetchval("SELECT balance FROM accounts") == 900_000
        assert await ledger_explains_balances(api.pool) == []
    finally:
        sweeper.request_stop()
        await task


def _leg(call_id: str) -> CallLeg:
    return CallLeg("switch-gone", call_id, "call", "+442071234567")


def _no_holds(pool: asyncpg.Pool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await pool.fetchval(
            "SELECT held = 0 AND open_reservations = 0 FROM accounts WHERE id = 'acct-1'"))
    return check


async def _gauge_is(name: str, value: float) -> bool:
    return sample(name) == value

"""CONTRACT §8: every /v1 call needs a credential, each credential its scope, customer
sessions one account until they expire, and every write an audit row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from rating.core.money import parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.sessions import token_digest
from tests.integration.test_http_api import TOKEN, Api, start_api
from tests.support import write_flat_tariffs

SWITCH = "switch-secret"


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Api]:
    configured = replace(settings, api_token=TOKEN, switch_token=SWITCH,
                         http_host="127.0.0.1", http_port=0)
    provider = SimulatedProvider()
    server = await start_api(configured, pool, write_flat_tariffs(tmp_path / "tariffs"),
                             provider, {"postgresql": True})
    store = AccountStore(pool)
    for account_id in ("acct-1", "acct-2"):
        await store.create(NewAccount(account_id, "flat", "EUR", parse_amount("1.00"),
                                      parse_amount("0.50")))
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{server.port}", http, provider, {}, pool)
    await server.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def session_for(api: Api, account_id: str, ttl: int | None = None) -> str:
    status, body = await api.call("POST", f"/v1/accounts/{account_id}/sessions",
                                  {} if ttl is None else {"ttl_seconds": ttl})
    assert status == 201, body
    assert body["url"].endswith(f"/billing?session={body['token']}")
    assert body["account_id"] == account_id and body["expires_at"].endswith("Z")
    return str(body["token"])


def routes(account: str) -> list[tuple[str, str, object]]:
    """Every /v1 route, with a body that the route accepts."""
    base = f"/v1/accounts/{account}"
    return [
        ("GET", base, None),
        ("GET", f"{base}/ledger", None),
        ("GET", f"{base}/usage", None),
        ("GET", f"{base}/authorize?service=call&destination=%2B442071234567", None),
        ("POST", f"{base}/topups", {"amount": "1.00", "idempotency_key": f"k-{account}"}),
        ("PUT", f"{base}/auto-recharge", {"enabled": True, "amount": "5", "below": "0.5"}),
        ("PUT", f"{base}/stt-billing", {"mode": "invoice"}),
        ("POST", f"{base}/adjustments", {"amount": "1", "reason": "goodwill",
                                         "idempotency_key": f"a-{account}"}),
        ("POST", f"{base}/sessions", {}),
        ("GET", f"{base}/audit", None),
        ("GET", "/v1/audit", None),
        ("GET", f"{base}/statement?month=2026-11", None),
        ("GET", "/v1/events/switch-1/evt-1", None),
        ("POST", f"{base}/reservations", {"source": "sw-1", "call_id": f"c-{account}",
                                          "service": "call", "destination": "+442071234567"}),
    ]


CUSTOMER_MAY = {"GET /v1/accounts/acct-1", "GET /v1/accounts/acct-1/ledger",
                "GET /v1/accounts/acct-1/usage", "POST /v1/accounts/acct-1/topups",
                "PUT /v1/accounts/acct-1/auto-recharge", "GET /v1/accounts/acct-1/statement"}


async def test_scope_table(api: Api) -> None:
    customer = await session_for(api, "acct-1")
    for method, path, body in routes("acct-1"):
        key = f"{method} {path.split('?')[0]}"
        status, answer = await api.call(method, path, body)
        assert status in (200, 201), (key, answer)  # the operator may do everything
        status, answer = await api.call(method, path, body, headers=bearer(SWITCH))
        if "/authorize" in path or "/reservations" in path:
            assert status == 200, answer
        else:
            assert (status, answer["error"]["code"]) == (403, "forbidden"), key
        status, answer = await api.call(method, path, body, headers=bearer(customer))
        if key in CUSTOMER_MAY:
            assert status in (200, 201), (key, answer)
        else:
            assert status in (403, 404), (key, answer)


async def test_a_session_never_sees_another_account_nor_tells_it_exists(api: Api) -> None:
    customer = await session_for(api, "acct-1")
    for account in ("acct-2", "nobody"):
        for method, path, body in routes(account):
            status, answer = await api.call(method, path, body, headers=bearer(customer))
            assert status in (403, 404), (path, answer)
            if path.startswith(f"/v1/accounts/{account}"):
                # The same answer for an account that exists and one that does not.
                assert (status, answer) == (404, {"error": {
                    "code": "not_found", "message": "no such account"}}), path
    status, other = await api.call("GET", "/v1/accounts/acct-2")
    assert other["balance"] == "1.000000" and api.provider.charge_calls == 0


async def test_sessions_expire_and_are_stored_only_as_digests(api: Api) -> None:
    token = await session_for(api, "acct-1", ttl=1)
    assert (await api.call("GET", "/v1/accounts/acct-1", headers=bearer(token)))[0] == 200
    stored = await api.pool.fetch("SELECT token_digest FROM customer_sessions")
    assert [r["token_digest"] for r in stored] == [token_digest(token)]
    await asyncio.sleep(1.5)
    status, body = await api.call("GET", "/v1/accounts/acct-1", headers=bearer(token))
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    for ttl in (0, -5, 86_401, "900", 1.5):
        status, body = await api.call("POST", "/v1/accounts/acct-1/sessions",
                                      {"ttl_seconds": ttl})
        assert 400 <= status < 500 and "ttl_seconds" in body["error"]["message"], ttl
    status, body = await api.call("POST", "/v1/accounts/nobody/sessions", {})
    assert (status, body["error"]["code"]) == (404, "unknown_account")


async def test_every_write_leaves_an_audit_row(api: Api) -> None:
    customer = await session_for(api, "acct-1")
    await api.call("POST", "/v1/accounts/acct-1/topups",
                   {"amount": "2.50", "idempotency_key": "t1"}, headers=bearer(customer))
    await api.call("PUT", "/v1/accounts/acct-1/stt-billing", {"mode": "invoice"},
                   headers=bearer(customer))  # refused: a customer may not
    await api.call("POST", "/v1/accounts/acct-1/adjustments",
                   {"amount": "-0.10", "reason": "correction", "idempotency_key": "a1"})
    await api.call("POST", "/v1/accounts/acct-1/topups",
                   {"amount": "not money", "idempotency_key": "t2"})
    await api.call("GET", "/v1/accounts/acct-1", headers=bearer(customer))  # a read: no row
    status, body = await api.call("GET", "/v1/accounts/acct-1/audit")
    assert status == 200
    rows = [(e["actor"], e["action"], e["outcome"]) for e in reversed(body["entries"])]
    assert rows == [
        ("operator", "session.issue", "201"),
        ("session:acct-1", "topup", "201"),
        ("session:acct-1", "stt_billing.set", "403 forbidden"),
        ("operator", "adjustment", "201"),
        ("operator", "topup", "400 invalid_amount"),
    ]
    topup = body["entries"][-2]
    assert topup["detail"]["body"] == {"amount": "2.50", "idempotency_key": "t1"}
    assert topup["account_id"] == "acct-1" and topup["at"].endswith("Z")
    status, everything = await api.call("GET", "/v1/audit?limit=2")
    assert status == 200 and len(everything["entries"]) == 2
    assert everything["next_before"] == everything["entries"][-1]["id"]
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await api.pool.execute("DELETE FROM audit_log")

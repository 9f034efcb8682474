"""Money input over HTTP against real PostgreSQL: bounds refused before any card is
charged, text PostgreSQL cannot store, account ids outside the rule, credit keys that
never collide, and outages that answer 503 without naming hosts or exception types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import pytest

from api.accounts import HttpApi
from rating.core.errors import BalanceOutOfBounds, InvalidRequest
from rating.core.money import BALANCE_BOUND, parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.recharges import RechargePolicy
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore
from tests.support import TcpProxy, ledger_explains_balances, write_flat_tariffs

TOKEN = "money-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Server:
    api: HttpApi
    url: str
    provider: SimulatedProvider
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    ready: dict[str, bool]

    async def call(self, method: str, path: str, body: object = None, *,
                   headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else None if body is None else orjson.dumps(body)
        async with self.http.request(method, self.url + path, data=data,
                                     headers={**AUTH, **(headers or {})}) as response:
            assert response.content_type == "application/json"
            return (response.status, orjson.loads(await response.read()),
                    dict(response.headers))

    async def balance(self, account_id: str = "acct-1") -> int:
        value: int = await self.pool.fetchval("SELECT balance FROM accounts WHERE id = $1",
                                              account_id)
        return value


async def start_server(settings: Settings, pool: asyncpg.Pool, tmp_path: Path,
                       provider: SimulatedProvider, ready: dict[str, bool]) -> HttpApi:
    async def readiness() -> dict[str, bool]:
        if "broken" in ready:
            raise OSError("connect call failed ('10.1.2.3', 5432)")
        return dict(ready)

    api = HttpApi(store=AccountStore(pool),
                  tariffs=TariffStore(write_flat_tariffs(tmp_path / "tariffs")),
                  topups=TopupService(pool, provider, RechargePolicy(settle_poll_s=0.1)),
                  settings=replace(settings, api_token=TOKEN, http_host="127.0.0.1",
                                   http_port=0),
                  readiness=readiness)
    await api.start()
    return api


@pytest.fixture
async def server(settings: Settings, pool: asyncpg.Pool,
                 tmp_path: Path) -> AsyncIterator[Server]:
    provider = SimulatedProvider()
    ready = {"database": True, "kafka": True}
    api = await start_server(settings, pool, tmp_path, provider, ready)
    await AccountStore(pool).create(NewAccount("acct-1", "flat", "EUR", parse_amount("1.00")))
    async with aiohttp.ClientSession() as http:
        yield Server(api, f"http://127.0.0.1:{api.port}", provider, pool, http, ready)
    await api.close()


async def test_an_oversized_topup_is_refused_before_any_card_is_charged(server: Server) -> None:
    topups = "/v1/accounts/acct-1/topups"
    for amount in ("635576892224847.710800", "1000000.000001", "99999999999999999999"):
        status, body, _ = await server.call("POST", topups, {"amount": amount,
                                                             "idempotency_key": amount})
        assert (status, body["error"]["code"]) == (422, "invalid_amount"), amount
        assert "at most 1000000.000000" in body["error"]["message"]
    assert server.provider.charge_calls == 0
    assert await server.pool.fetchval("SELECT count(*) FROM topup_payments") == 0
    assert await server.balance() == parse_amount("1.00")
    # The largest single amount itself is taken.
    status, body, _ = await server.call("POST", topups, {"amount": "1000000",
                                                         "idempotency_key": "max"})
    assert status == 201 and body["account"]["balance"] == "1000001.000000"


async def test_every_caller_amount_has_the_same_bound(server: Server) -> None:
    too_much = "1000000.000001"
    status, body, _ = await server.call("PUT", "/v1/accounts/acct-1/auto-recharge",
                                        {"enabled": True, "amount": too_much, "below": "5"})
    assert (status, body["error"]["code"]) == (422, "invalid_amount")
    status, body, _ = await server.call("PUT", "/v1/accounts/acct-1/auto-recharge",
                                        {"enabled": True, "amount": "5", "below": too_much})
    assert (status, body["error"]["code"]) == (422, "invalid_amount")
    status, body, _ = await server.call("POST", "/v1/accounts/acct-1/adjustments", {
        "amount": "-" + too_much, "reason": "r", "idempotency_key": "k"})
    assert (status, body["error"]["code"]) == (422, "invalid_amount")
    assert await server.balance() == parse_amount("1.00")


async def test_a_credit_past_the_balance_bound_charges_nothing_and_credits_nothing(
        server: Server) -> None:
    store = AccountStore(server.pool)
    await store.create(NewAccount("rich", "flat", "EUR", BALANCE_BOUND - parse_amount("0.50")))
    status, body, _ = await server.call("POST", "/v1/accounts/rich/topups",
                                        {"amount": "1.00", "idempotency_key": "k1"})
    assert (status, body["error"]["code"]) == (422, "balance_out_of_range")
    assert server.provider.charge_calls == 0
    assert await server.pool.fetchval("SELECT count(*) FROM topup_payments") == 0
    # The store refuses too (defence in depth): nothing written, whichever way it is asked.
    with pytest.raises(BalanceOutOfBounds):
        await store.credit("rich", kind="topup", source="topup", key="rich/k2",
                           amount=parse_amount("1.00"))
    await store.create(NewAccount("poor", "flat", "EUR", -BALANCE_BOUND + 1))
    status, body, _ = await server.call("POST", "/v1/accounts/poor/adjustments", {
        "amount": "-0.000002", "reason": "one too many", "idempotency_key": "k3"})
    assert (status, body["error"]["code"]) == (422, "balance_out_of_range")
    assert await server.pool.fetchval("SELECT count(*) FROM ledger") == 0
    assert await server.balance("rich") == BALANCE_BOUND - parse_amount("0.50")
    # Opening balances past the bound are never stored either.
    with pytest.raises(BalanceOutOfBounds):
        await store.create(NewAccount("richer", "flat", "EUR", BALANCE_BOUND + 1))
    assert await ledger_explains_balances(server.pool) == []


async def raw_request(port: int, head: bytes, body: bytes) -> tuple[int, Any]:
    """An HTTP request written byte for byte (a header that is not UTF-8)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                 + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), orjson.loads(rest.partition(b"\r\n\r\n")[2])


async def test_text_postgresql_cannot_store_is_a_4xx_and_changes_nothing(server: Server) -> None:
    adjustments = "/v1/accounts/acct-1/adjustments"
    status, body, _ = await server.call("POST", adjustments, {
        "amount": "1", "reason": "nul\u0000inside", "idempotency_key": "a1"})
    assert (status, body["error"]["code"]) == (422, "invalid_text")
    status, body, _ = await server.call("POST", adjustments, {
        "amount": "1", "reason": "ok", "idempotency_key": "k\u0000"})
    assert (status, body["error"]["code"]) == (422, "invalid_text")
    status, body, _ = await server.call(
        "POST", adjustments, raw=b'{"amount": "1", "reason": "\\ud800", "idempotency_key": "a"}')
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body, _ = await server.call("POST", adjustments, {
        "amount": "1", "reason": "x" * 1001, "idempotency_key": "a2"})
    assert (status, body["error"]["code"]) == (422, "invalid_text")
    # A header that is not UTF-8 reaches the server as lone surrogates.
    for path, payload in [(adjustments, b'{"amount": "1", "reason": "support"}'),
                          ("/v1/accounts/acct-1/topups", b'{"amount": "1"}')]:
        status, body = await raw_request(
            server.api.port or 0,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
            + b"Idempotency-Key: caf\xe9-\xff\r\nContent-Type: application/json\r\n", payload)
        assert (status, body["error"]["code"]) == (422, "invalid_text"), path
    assert server.provider.charge_calls == 0
    assert await server.pool.fetchval("SELECT count(*) FROM ledger") == 0


async def test_account_ids_outside_the_rule_name_no_account(server: Server) -> None:
    for quoted in ("a%2Fb", "a%20b", "%C3%A9t%C3%A9", "x" * 129, "a%00b", "%ED%A0%80"):
        for method, suffix, body in [("GET", "", None), ("GET", "/ledger", None),
                                     ("POST", "/topups", {"amount": "1",
                                                          "idempotency_key": "k"})]:
            status, answer, _ = await server.call(method, f"/v1/accounts/{quoted}{suffix}",
                                                  body)
            assert status == 404, (quoted, suffix, answer)
            assert answer["error"]["code"] in ("unknown_account", "not_found")
    assert server.provider.charge_calls == 0
    with pytest.raises(InvalidRequest) as refused:
        await AccountStore(server.pool).create(NewAccount("a/b", "flat", "EUR"))
    assert refused.value.code == "invalid_account"
    # The database's own guard, whatever writes the row.
    with pytest.raises(asyncpg.CheckViolationError):
        await server.pool.execute(
            "INSERT INTO accounts (id, plan_id, currency, balance) VALUES ('a/b', 'flat',"
            " 'EUR', 0)")


async def test_keys_that_collided_as_strings_are_two_credits(server: Server) -> None:
    # Account "a" with key "b/c" and account "a/b" with key "c" shared the ledger key
    # "a/b/c". "a/b" can no longer be created; here two valid ids whose keys look alike.
    store = AccountStore(server.pool)
    for account_id in ("a", "a:b"):
        await store.create(NewAccount(account_id, "flat", "EUR"))
    first = await server.call("POST", "/v1/accounts/a/topups",
                              {"amount": "1", "idempotency_key": "b/c"})
    second = await server.call("POST", "/v1/accounts/a:b/topups",
                               {"amount": "2", "idempotency_key": "c"})
    third = await server.call("POST", "/v1/accounts/a:b/topups",
                              {"amount": "3", "idempotency_key": "a/b/c"})
    assert [r[0] for r in (first, second, third)] == [201, 201, 201]
    assert (await server.balance("a"), await server.balance("a:b")) == (
        parse_amount("1"), parse_amount("5"))
    keys = await server.pool.fetch("SELECT event_id FROM ledger ORDER BY entry_id")
    assert [r["event_id"] for r in keys] == ["a/b/c", "a:b/c", "a:b/a/b/c"]
    assert len({p.idempotency_key for p in server.provider.payments}) == 3


async def test_outages_answer_503_with_retry_after_and_no_library_words(
        settings: Settings, database_url: str, tmp_path: Path) -> None:
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    pool = await asyncpg.create_pool(urlunsplit(parts._replace(netloc=netloc)),
                                     min_size=1, max_size=2, timeout=2)
    provider = SimulatedProvider("unavailable")
    ready = {"database": True}
    api = await start_server(settings, pool, tmp_path, provider, ready)
    try:
        await AccountStore(pool).create(NewAccount("acct-1", "flat", "EUR"))
        async with aiohttp.ClientSession() as http:
            srv = Server(api, f"http://127.0.0.1:{api.port}", provider, pool, http, ready)
            status, body, headers = await srv.call("POST", "/v1/accounts/acct-1/topups",
                                                   {"amount": "1", "idempotency_key": "k"})
            assert (status, body["error"]["code"]) == (503, "payment_unavailable")
            assert headers["Retry-After"].isdigit()
            await proxy.cut()  # the database goes away
            for method, path, payload in [
                    ("GET", "/v1/accounts/acct-1", None),
                    ("POST", "/v1/accounts/acct-1/adjustments",
                     {"amount": "1", "reason": "r", "idempotency_key": "k"})]:
                status, body, headers = await srv.call(method, path, payload)
                assert (status, body["error"]["code"]) == (503, "store_unavailable"), path
                assert headers["Retry-After"].isdigit()
                message = body["error"]["message"]
                assert "127.0.0.1" not in message and "Error" not in message, message
            ready["broken"] = True
            status, body, headers = await srv.call("GET", "/readyz")
            assert status == 503 and body == {"ready": False, "checks": {},
                                              "down": ["readiness"]}
            del ready["broken"]
            ready["database"] = False
            status, body, headers = await srv.call("GET", "/readyz")
            assert status == 503 and body["down"] == ["database"]
            assert headers["Retry-After"].isdigit()
    finally:
        await api.close()
        await proxy.cut()
        pool.terminate()


async def test_what_fuzzing_found_stays_fixed(server: Server) -> None:
    base = "/v1/accounts/acct-1"
    refused = [
        ("GET", f"{base}/usage?since=", None, None),  # empty: not a date-time
        ("GET", f"{base}/usage?since=2026-01-01", None, None),  # a date, no time
        ("GET", f"{base}/ledger?limit=", None, None),
        ("GET", f"{base}/authorize?service=stt&direction=null", None, None),
        ("GET", f"{base}/authorize?service=stt&destination=12ab", None, None),
        ("POST", f"{base}/topups", {"amount": "1", "idempotency_key": None},
         {"Idempotency-Key": "k"}),
        ("POST", f"{base}/sessions", None, None),  # whitespace is not JSON: raw below
        ("GET", f"{base}/ledger.csv?month=", None, None),
        ("GET", f"{base}/ledger.csv?month=0000-00", None, None),
        ("GET", f"{base}/statement?month=", None, None),
        ("PUT", f"{base}/auto-recharge", {"enabled": False, "max_per_day": None}, None),
        ("PUT", f"{base}/auto-recharge", {"enabled": False, "alert_thresholds": None}, None),
    ]
    for method, path, body, headers in refused:
        raw = b" \n" if path.endswith("/sessions") else None
        status, answer, _ = await server.call(method, path, body, headers=headers, raw=raw)
        assert status == 400, (path, answer)
    accepted = [
        ("GET", f"{base}/ledger?before={2**63 - 1}", None),
        ("GET", f"{base}/usage?since=2026-01-01T00:00:00%2B01:00", None),
        ("GET", f"{base}/usage?since=2026-01-01t00:00:00z", None),
        ("POST", f"{base}/sessions", {"ttl_seconds": 60.0}),  # JSON Schema's integer 60
        ("PUT", f"{base}/auto-recharge", {"enabled": False, "max_per_day": 3.0}),
    ]
    for method, path, body in accepted:
        status, answer, _ = await server.call(method, path, body)
        assert status in (200, 201), (path, answer)
    assert server.provider.charge_calls == 0

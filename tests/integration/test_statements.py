"""Monthly statements against real PostgreSQL: every charge and credit of the month with
its detail, totals that are the ledger's, JSON and CSV, CLI and HTTP; and the API's
request metrics, request ids and log lines."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY

from api.accounts import HttpApi
from commands.statements import cmd_statement
from rating.core.errors import RequestError, UnknownAccount
from rating.core.events import decode_usage_event
from rating.core.money import format_amount, parse_amount
from rating.core.rate import rate
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from rating.stores.statements import current_month, monthly_statement
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore
from tests.integration.test_http_api import assert_matches
from tests.support import usage_event, write_flat_tariffs

TOKEN = "op-token"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


def month_start(offset: int) -> datetime:
    """The first instant of the month ``offset`` months from this one (UTC)."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + offset
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@pytest.fixture
def tariffs(tmp_path: Path) -> TariffStore:
    return TariffStore(write_flat_tariffs(tmp_path / "tariffs"))


async def bill(pool: asyncpg.Pool, tariffs: TariffStore, events: list[tuple[bytes, bool]],
               ) -> None:
    """Rate and debit ``(event, on invoice)`` pairs as the usage consumer does."""
    batch = []
    for raw, on_invoice in events:
        event = decode_usage_event(raw)
        assert event.time is not None
        batch.append(RatedUsage(rate(event, tariffs.book, "flat"), event.time, on_invoice))
    async with pool.acquire() as conn:
        await apply_usage(conn, batch)


def at(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def ledger(pool: asyncpg.Pool, tariffs: TariffStore) -> AsyncIterator[str]:
    """acct-1 with usage before, during and after this month, and credits this month."""
    store = AccountStore(pool)
    for account_id in ("acct-1", "acct-2"):
        await store.create(NewAccount(account_id, "flat", "EUR", parse_amount("10.00")))
    this, before, after = month_start(0), month_start(-1), month_start(1)
    inside = this + timedelta(hours=5)

    def call(event_id: str, when: datetime, to_s: int, account: str = "acct-1") -> bytes:
        return usage_event("usage.call", event_id, account,
                           {"call_id": f"c-{event_id}", "destination": "+447400123456",
                            "from_s": 0, "to_s": to_s}, time_=at(when))

    await bill(pool, tariffs, [
        (call("old", before + timedelta(days=3), 60), False),
        (call("c1", this, 40), False),  # the month's first instant belongs to it
        (call("c2", inside, 125), False),
        (usage_event("usage.tollfree", "t1", "acct-1",
                     {"call_id": "t", "tollfree_number": "+448001234567",
                      "direction": "inbound", "from_s": 0, "to_s": 90}, time_=at(inside)),
         False),
        (usage_event("usage.sms", "s1", "acct-1",
                     {"message_id": "m", "destination": "+33612345678", "segments": 2},
                     time_=at(inside)), False),
        (usage_event("usage.stt", "j1", "acct-1", {"job_id": "j", "seconds": 61},
                     time_=at(inside)), False),
        (usage_event("usage.stt", "j2", "acct-1", {"job_id": "k", "seconds": 601},
                     time_=at(inside)), True),  # billed on the invoice
        (call("new", after - timedelta(microseconds=1), 60), False),  # still this month
        (call("next", after, 60), False),
        (call("other", inside, 60, account="acct-2"), False),
    ])
    await store.credit("acct-1", kind="topup", source="topup", key="acct-1/t1",
                       amount=parse_amount("5.00"))
    await store.credit("acct-1", kind="adjustment", source="adjustment", key="acct-1/a1",
                       amount=parse_amount("-0.50"), reason="goodwill reversed")
    yield current_month()


async def test_statement_totals_equal_the_ledgers(pool: asyncpg.Pool, ledger: str) -> None:
    statement = (await monthly_statement(pool, "acct-1", ledger)).as_json()
    start, end = month_start(0), month_start(1)
    when = "coalesce(event_time, recorded_at)"
    in_month = f"account_id = 'acct-1' AND {when} >= $1 AND {when} < $2"
    rows = await pool.fetch(f"SELECT event_id, kind, service, amount, accrued FROM ledger"
                            f" WHERE {in_month}", start, end)
    entries = statement["entries"]
    assert isinstance(entries, list)
    assert sorted(e["event_id"] for e in entries) == sorted(r["event_id"] for r in rows)
    assert {e["event_id"] for e in entries} >= {"c1", "c2", "t1", "s1", "j1", "j2", "new",
                                                 "acct-1/t1", "acct-1/a1"}
    before = await pool.fetchval(f"SELECT coalesce(sum(amount), 0)::bigint FROM ledger"
                                 f" WHERE account_id = 'acct-1' AND {when} < $1", start)
    opening = parse_amount("10.00") + before
    assert statement["opening_balance"] == format_amount(opening)
    month_sum = sum(r["amount"] for r in rows)
    assert statement["closing_balance"] == format_amount(opening + month_sum)
    assert sum(parse_amount(e["amount"]) for e in entries) == month_sum
    totals = statement["totals"]
    assert isinstance(totals, dict)
    by_service = await pool.fetch(
        f"SELECT service, -sum(amount)::bigint AS debited, sum(accrued)::bigint AS accrued,"
        f" count(*) AS n"
        f" FROM ledger WHERE {in_month} AND kind IN ('usage', 'invoice') GROUP BY service",
        start, end)
    assert totals["services"] == {
        r["service"]: {"debited": format_amount(r["debited"]),
                       "accrued": format_amount(r["accrued"]), "events": r["n"]}
        for r in by_service}
    assert totals["accrued_for_invoice"] == format_amount(sum(r["accrued"] for r in rows))
    assert totals["accrued_for_invoice"] == "0.246000"  # j2: 615 s at 0.024/min
    assert totals["services"]["stt"]["debited"] == "0.030000"  # j1 only
    assert totals["credits"] == {
        "topup": {"amount": "5.000000", "entries": 1},
        "recharge": {"amount": "0.000000", "entries": 0},
        "adjustment": {"amount": "-0.500000", "entries": 1}}
    assert totals["debited"] == format_amount(-sum(
        r["amount"] for r in rows if r["kind"] in ("usage", "invoice")))
    # Every usage entry explains itself; credits carry their reason instead.
    by_id = {e["event_id"]: e for e in entries}
    assert by_id["c2"]["detail"]["billed_seconds"] == 126  # 30/6 prefix row
    assert by_id["j2"]["kind"] == "invoice" and by_id["j2"]["amount"] == "0.000000"
    assert by_id["acct-1/a1"]["detail"] is None
    assert by_id["acct-1/a1"]["reason"] == "goodwill reversed"
    # The balance the ledger explains is where the statements of every month lead.
    later = (await monthly_statement(pool, "acct-1", month_start(1).strftime("%Y-%m"))).as_json()
    assert later["opening_balance"] == statement["closing_balance"]
    balance = await pool.fetchval("SELECT balance FROM accounts WHERE id = 'acct-1'")
    assert later["closing_balance"] == format_amount(balance)


async def test_statement_as_csv_and_on_the_command_line(
        settings: Settings, pool: asyncpg.Pool, ledger: str) -> None:
    statement = await monthly_statement(pool, "acct-1", ledger)
    rows = list(csv.DictReader(io.StringIO(statement.as_csv())))
    assert rows[0]["kind"] == "opening_balance" and rows[-1]["kind"] == "closing_balance"
    entries = [r for r in rows if r["entry_id"]]
    assert [r["event_id"] for r in entries] == [e["event_id"] for e in
                                                statement.as_json()["entries"]]  # type: ignore[union-attr]
    c2 = next(r for r in entries if r["event_id"] == "c2")
    assert (c2["number"], c2["reference"], c2["usage"], c2["billed"], c2["rate"],
            c2["connect_fee"], c2["increment"], c2["prefix"], c2["plan_version"],
            c2["amount"]) == ("+447400123456", "c-c2", "0-125 s", "126", "0.300000",
                              "0.050000", "30/6", "447", "2026-01-01T00:00:00Z", "-0.680000")
    totals = {r["service"]: r for r in rows if r["kind"] == "total" and r["service"]}
    assert totals["stt"]["accrued"] == "0.246000" and totals["stt"]["usage"] == "2 events"
    assert rows[-1]["amount"] == statement.as_json()["closing_balance"]

    out = io.StringIO()
    assert await cmd_statement(settings, out, "acct-1", ledger, as_csv=False) == 0
    assert orjson.loads(out.getvalue()) == orjson.loads(orjson.dumps(statement.as_json()))
    out = io.StringIO()
    assert await cmd_statement(settings, out, "acct-1", None, as_csv=True) == 0
    assert out.getvalue() == statement.as_csv().replace("\r\n", "\n")
    with pytest.raises(RequestError, match="month"):
        await cmd_statement(settings, io.StringIO(), "acct-1", "2026-13", as_csv=False)
    with pytest.raises(UnknownAccount):
        await cmd_statement(settings, io.StringIO(), "nobody", ledger, as_csv=False)


@pytest.fixture
async def http(settings: Settings, pool: asyncpg.Pool,
               tariffs: TariffStore) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    api = HttpApi(store=AccountStore(pool), tariffs=tariffs,
                  topups=TopupService(pool, SimulatedProvider()),
                  settings=replace(settings, api_token=TOKEN, http_host="127.0.0.1"),
                  readiness=_ready)
    async with api, aiohttp.ClientSession() as session:
        yield f"http://127.0.0.1:{api.port}", session


async def _ready() -> dict[str, bool]:
    return {"postgresql": True}


async def test_statement_over_http_json_and_csv_for_operator_and_customer(
        pool: asyncpg.Pool, ledger: str, http: tuple[str, aiohttp.ClientSession]) -> None:
    base, session = http
    url = f"{base}/v1/accounts/acct-1/statement?month={ledger}"
    expected = orjson.loads(orjson.dumps(
        (await monthly_statement(pool, "acct-1", ledger)).as_json()))
    async with session.get(url, headers=OPERATOR) as response:
        assert response.status == 200 and await response.json() == expected
    assert_matches(expected, "Statement")  # as the OpenAPI document says
    async with session.get(f"{url}&format=csv", headers=OPERATOR) as response:
        assert response.status == 200 and response.content_type == "text/csv"
        assert "attachment" in response.headers["Content-Disposition"]
        by_query = await response.text()
    async with session.get(url, headers={**OPERATOR, "Accept": "text/csv"}) as response:
        assert response.content_type == "text/csv" and await response.text() == by_query
    async with session.post(f"{base}/v1/accounts/acct-1/sessions", json={},
                            headers=OPERATOR) as response:
        token = (await response.json())["token"]
    customer = {"Authorization": f"Bearer {token}"}
    async with session.get(url, headers=customer) as response:
        assert response.status == 200 and (await response.json())["entries"]
    async with session.get(f"{base}/v1/accounts/acct-2/statement", headers=customer) as response:
        assert response.status == 404  # another account: never told whether it exists
    async with session.get(url) as response:
        assert response.status == 401
    for bad in ("2026-13", "26-11", "2026-1", "x"):
        async with session.get(f"{base}/v1/accounts/acct-1/statement?month={bad}",
                               headers=OPERATOR) as response:
            assert response.status == 400, bad
            assert (await response.json())["error"]["code"] == "invalid_query"
    async with session.get(f"{url}&format=xml", headers=OPERATOR) as response:
        assert response.status == 400
    async with session.get(f"{base}/v1/accounts/nobody/statement",
                           headers=OPERATOR) as response:
        assert response.status == 404


def requests_counted(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("rating_http_requests_total", {
        "route": route, "method": method, "status": status}) or 0.0


async def test_every_request_is_counted_timed_and_logged_with_its_request_id(
        http: tuple[str, aiohttp.ClientSession], ledger: str,
        caplog: pytest.LogCaptureFixture) -> None:
    base, session = http
    account = "/v1/accounts/{account_id}"
    ok_before = requests_counted(account, "GET", "200")
    denied_before = requests_counted(account, "GET", "401")
    unrouted_before = requests_counted("unmatched", "GET", "404")
    timed_before = REGISTRY.get_sample_value("rating_http_request_duration_seconds_count", {
        "route": account, "method": "GET"}) or 0.0
    with caplog.at_level(logging.INFO, logger="api.requests"):
        async with session.get(f"{base}/v1/accounts/acct-1", headers={
                **OPERATOR, "X-Request-Id": "trace-42"}) as response:
            assert response.status == 200
            assert response.headers["X-Request-Id"] == "trace-42"
        async with session.get(f"{base}/v1/accounts/acct-2?session=secret") as response:
            assert response.status == 401
            generated = response.headers["X-Request-Id"]
            assert len(generated) == 32
        async with session.get(f"{base}/no/such/{'x' * 40}", headers={
                "X-Request-Id": "bad id with spaces"}) as response:
            assert response.status == 404
            assert response.headers["X-Request-Id"] != "bad id with spaces"
    assert requests_counted(account, "GET", "200") == ok_before + 1
    assert requests_counted(account, "GET", "401") == denied_before + 1
    assert requests_counted("unmatched", "GET", "404") == unrouted_before + 1
    assert REGISTRY.get_sample_value("rating_http_request_duration_seconds_count", {
        "route": account, "method": "GET"}) == timed_before + 2
    lines = [r.getMessage() for r in caplog.records if r.name == "api.requests"]
    assert len(lines) == 3
    assert "request_id=trace-42 method=GET path=/v1/accounts/acct-1" in lines[0]
    assert "status=200" in lines[0] and "duration_ms=" in lines[0]
    assert f"request_id={generated}" in lines[1] and "status=401" in lines[1]
    assert all("secret" not in line for line in lines)  # never the query string

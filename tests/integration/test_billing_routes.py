"""The billing page's HTTP side (CONTRACT §9) without a browser: the session link
exchanged for a cookie, the cookie's scope, CSRF, audit, validation, the card, the CSV
and the /v1 reads the page shares with the API."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from api.access import CSRF_HEADER, SESSION_COOKIE
from rating.core.detail import RatedDetail
from rating.core.money import parse_amount
from rating.core.rate import Charge
from rating.payments.simulated import SimulatedProvider, sample_card
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from tests.integration.test_http_api import AUTH, TOKEN, assert_matches, start_api
from tests.support import write_flat_tariffs


@dataclass
class Site:
    url: str
    provider: SimulatedProvider
    pool: asyncpg.Pool

    async def link(self, account_id: str, ttl: int = 900) -> str:
        async with aiohttp.ClientSession() as http, http.post(
                f"{self.url}/v1/accounts/{account_id}/sessions", headers=AUTH,
                json={"ttl_seconds": ttl}) as response:
            assert response.status == 201
            return str((await response.json())["url"])


@pytest.fixture
async def site(settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Site]:
    configured = replace(settings, api_token=TOKEN, http_host="127.0.0.1", http_port=0,
                         topup_presets=(("GBP", (parse_amount("5"), parse_amount("15"))),))
    provider = SimulatedProvider()
    server = await start_api(configured, pool, write_flat_tariffs(tmp_path / "tariffs"),
                             provider, {"postgresql": True})
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "flat", "EUR", parse_amount("12.3456"),
                                  parse_amount("2")))
    await store.create(NewAccount("acct-2", "flat", "EUR", parse_amount("777.77")))
    await store.create(NewAccount("acct-gb", "flat", "GBP", parse_amount("-1.5")))
    yield Site(f"http://127.0.0.1:{server.port}", provider, pool)
    await server.close()


class Browser:
    """A cookie-keeping client that opens a billing link as a browser would."""

    def __init__(self, http: aiohttp.ClientSession, site: Site) -> None:
        self.http = http
        self.site = site
        self.csrf = ""

    async def open(self, link: str) -> tuple[int, str]:
        async with self.http.get(link, headers={"Accept": "text/html"}) as response:
            html = await response.text()
        found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
        self.csrf = found.group(1) if found else ""
        return response.status, html

    async def call(self, method: str, path: str, body: object = None, *,
                   csrf: bool = True) -> tuple[int, Any]:
        headers = {CSRF_HEADER: self.csrf} if csrf else {}
        async with self.http.request(method, self.site.url + path, headers=headers,
                                     data=None if body is None else orjson.dumps(body),
                                     ) as response:
            return response.status, orjson.loads(await response.read())


@pytest.fixture
async def browser(site: Site) -> AsyncIterator[Browser]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Browser(http, site)


async def test_the_link_becomes_an_httponly_strict_cookie_and_leaves_the_address_bar(
        site: Site) -> None:
    link = await site.link("acct-1")
    async with aiohttp.ClientSession() as http, http.get(link, allow_redirects=False) as first:
        assert first.status == 303 and first.headers["Location"] == "/billing"
        cookie = SimpleCookie(first.headers["Set-Cookie"])[SESSION_COOKIE]
        assert cookie.value == link.rpartition("=")[2]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert cookie["path"] == "/billing" and not cookie["secure"]  # plain http here
        assert first.headers["Cache-Control"] == "no-store"


async def test_the_page_shows_its_account_with_the_apis_amounts(
        site: Site, browser: Browser) -> None:
    status, html = await browser.open(await site.link("acct-1"))
    assert status == 200 and "acct-1" in html and "acct-2" not in html
    assert ">12.3456 EUR</output>" in html
    card = sample_card("acct-1")
    assert f"{card.brand}</span> ending in\n<span class=\"last4\">{card.last4}" in html
    for name in ("Credit balance", "Card details", "Automatic adding credit", "Add this amount",
                 "If balance falls below", "Save and Turn On", "One-time adding credit",
                 "Pay Now", "Billing data"):
        assert name in html, name
    assert "never pays the subscription" in html and "not refunded" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # every URL is this site's
    status, state = await browser.call("GET", "/billing/state")
    assert status == 200 and state["balance"] == "12.345600"
    assert Decimal(state["balance_text"].split()[0]) == Decimal(state["account"]["balance"])
    async with aiohttp.ClientSession() as http, http.get(
            f"{site.url}/v1/accounts/acct-1", headers=AUTH) as response:
        assert state["account"] == await response.json()  # the API's own account object


async def test_a_wrong_or_expired_link_shows_only_that_it_expired(
        site: Site, browser: Browser) -> None:
    for link in (f"{site.url}/billing?session=not-a-token", f"{site.url}/billing",
                 f"{site.url}/billing?session="):
        status, html = await browser.open(link)
        assert status == 403 and "This link has expired" in html, link
        assert "acct-" not in html and "EUR" not in html
    short = await site.link("acct-1", ttl=1)
    status, html = await browser.open(short)
    assert status == 200 and "12.3456 EUR" in html
    await asyncio.sleep(1.5)
    status, html = await browser.open(f"{site.url}/billing")
    assert status == 403 and "This link has expired" in html and "acct-1" not in html
    status, body = await browser.call("GET", "/billing/state")
    assert (status, body["error"]["code"]) == (401, "session_expired")


async def test_a_second_link_replaces_the_first_and_never_shows_both(
        site: Site, browser: Browser) -> None:
    await browser.open(await site.link("acct-1"))
    first_page = browser.csrf
    status, html = await browser.open(await site.link("acct-2"))
    assert status == 200 and "777.77 EUR" in html and "acct-1" not in html
    _, state = await browser.call("GET", "/billing/state")
    assert state["account"]["id"] == "acct-2" and "acct-1" not in orjson.dumps(state).decode()
    # The first page, still open in another tab, gets nothing of acct-2 (nor writes to it).
    browser.csrf = first_page
    for method, path, body in [("GET", "/billing/state", None),
                               ("POST", "/billing/pay", {"amount": "10", "idempotency_key": "x"}),
                               ("GET", "/billing/ledger.csv", None)]:
        status, refused = await browser.call(method, path, body)
        assert (status, refused["error"]["code"]) == (403, "csrf_failed"), path
    assert site.provider.charge_calls == 0
    # A wrong link forgets the session the browser held: nothing of acct-2 shows after it.
    await browser.open(f"{site.url}/billing?session=wrong")
    status, html = await browser.open(f"{site.url}/billing")
    assert status == 403 and "acct-2" not in html


async def test_writes_need_the_pages_csrf_token_and_are_audited_as_the_session(
        site: Site, browser: Browser) -> None:
    await browser.open(await site.link("acct-1"))
    pay = {"amount": "10.000000", "idempotency_key": "page-k1"}
    status, body = await browser.call("POST", "/billing/pay", pay, csrf=False)
    assert (status, body["error"]["code"]) == (403, "csrf_failed")
    status, body = await browser.call("PUT", "/billing/auto-recharge", {"enabled": False},
                                      csrf=False)
    assert status == 403 and site.provider.charge_calls == 0
    status, body = await browser.call("POST", "/billing/pay", pay)
    assert status == 200 and body["status"] == "succeeded"
    assert body["state"]["balance"] == "22.345600" and body["next_idempotency_key"] != "page-k1"
    status, again = await browser.call("POST", "/billing/pay", pay)  # a double click
    assert status == 200 and again["replay"] is True
    assert len(site.provider.captured("acct-1")) == 1
    rows = await site.pool.fetch("SELECT actor, action, account_id, outcome FROM audit_log"
                                 " WHERE actor LIKE 'session:%' ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("session:acct-1", "billing.topup", "acct-1", "200"),
        ("session:acct-1", "billing.topup", "acct-1", "200")]


async def test_declines_and_unusable_cards_say_why(site: Site, browser: Browser) -> None:
    await browser.open(await site.link("acct-1"))
    site.provider.set_behaviour("decline", account_id="acct-1")
    status, body = await browser.call("POST", "/billing/pay",
                                      {"amount": "25", "idempotency_key": "d1"})
    assert status == 402 and body["error"]["reason"] == "card_declined"
    assert body["error"]["reason_text"] == "The card was declined."
    async with aiohttp.ClientSession() as http, http.get(
            f"{site.url}/v1/accounts/acct-1/topups", headers=AUTH) as response:
        payments = await response.json()
    assert_matches(payments, "Topups")
    assert [(t["idempotency_key"], t["amount"], t["status"], t["reason"])
            for t in payments["topups"]] == [("d1", "25.000000", "declined", "card_declined")]
    site.provider.set_behaviour("succeed", account_id="acct-1")
    site.provider.set_card("acct-1", "expired")
    _, state = await browser.call("GET", "/billing/state")
    assert "expired" in state["pay_blocked"] and "Expired" in state["parts"]["card"]
    status, body = await browser.call("POST", "/billing/pay",
                                      {"amount": "25", "idempotency_key": "d2"})
    assert status == 402 and body["error"]["reason"] == "expired_card"
    site.provider.set_card("acct-1", "none")
    _, state = await browser.call("GET", "/billing/state")
    assert "No card is saved" in state["parts"]["card"] and state["pay_blocked"]
    assert state["balance"] == "12.345600" and site.provider.captured() == []


async def test_automatic_recharge_fields_are_checked_one_by_one(
        site: Site, browser: Browser) -> None:
    await browser.open(await site.link("acct-1"))
    cases = [("", "5", {"amount": "Enter an amount."}),
             # A threshold may be 0 (as on the API); a payment may not.
             ("0", "0.00", {"amount": "Enter an amount greater than zero."}),
             ("20", "-1", {"below": "Enter 0 or more."}),
             ("ten", "5", {"amount": "Enter a number, like 20 or 20.50."}),
             ("20", "1000000.01", {"below": "Enter at most 1000000.00 EUR."}),
             # A card is charged whole cents.
             ("0.001", "5.005", {"amount": "Use at most 2 decimals, like 20.50.",
                                 "below": "Use at most 2 decimals, like 20.50."}),
             ("1.0000001", None, {"amount": "Use at most 2 decimals, like 20.50.",
                                  "below": "Enter an amount."})]
    for amount, below, expected in cases:
        status, body = await browser.call("PUT", "/billing/auto-recharge",
                                          {"enabled": True, "amount": amount, "below": below})
        assert status == 422 and body["error"]["fields"] == expected, (amount, below)
    account = await AccountStore(site.pool).get("acct-1")
    assert not account.auto_recharge_enabled
    status, state = await browser.call("PUT", "/billing/auto-recharge",
                                       {"enabled": True, "amount": " 20.5 ", "below": "5"})
    assert status == 200 and state["auto_recharge"] == {
        "enabled": True, "amount": "20.50", "below": "5.00"}
    account = await AccountStore(site.pool).get("acct-1")
    assert (account.auto_recharge_amount, account.low_balance_threshold) == (
        parse_amount("20.5"), parse_amount("5"))
    status, state = await browser.call("PUT", "/billing/auto-recharge", {"enabled": False})
    assert status == 200 and state["auto_recharge"]["enabled"] is False
    status, body = await browser.call("POST", "/billing/pay",
                                      {"amount": "0.001", "idempotency_key": "k-sub-cent"})
    assert (status, body["error"]["code"]) == (422, "invalid_amount")
    assert site.provider.payments == []  # nothing charged


async def test_presets_per_currency_and_a_negative_balance(
        site: Site, browser: Browser) -> None:
    _, euro = await browser.open(await site.link("acct-1"))
    assert re.findall(r'id="preset-[0-9]+" value="([0-9.]+)"', euro) == [
        "10.000000", "25.000000", "50.000000", "100.000000"]
    _, pound = await browser.open(await site.link("acct-gb"))
    assert re.findall(r'id="preset-[0-9]+" value="([0-9.]+)"', pound) == ["5.000000", "15.000000"]
    assert ">-1.50 GBP</output>" in pound and "Your balance is negative" in pound
    assert "Add credit now" in pound


async def test_the_months_ledger_as_csv_and_the_v1_reads_the_page_uses(
        site: Site, browser: Browser) -> None:
    charge = Charge("=cmd|' /C calc'!A0", "sw", "acct-1", "call", "GB", parse_amount("0.25"),
                    "EUR", "flat")
    async with site.pool.acquire() as conn:
        await apply_usage(conn, [RatedUsage(charge, datetime.now(UTC), False)])
    await browser.open(await site.link("acct-1"))
    month = datetime.now(UTC).strftime("%Y-%m")
    page = f"{site.url}/billing/ledger.csv?page_token={browser.csrf}&month="
    async with browser.http.get(f"{site.url}/billing/ledger.csv?month={month}") as response:
        assert response.status == 403  # a cross-site link has no page token
    async with browser.http.get(page + month) as response:
        assert response.status == 200 and response.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [(r["kind"], r["service"], r["amount"], r["event_id"]) for r in rows] == [
        ("usage", "call", "-0.250000", "'=cmd|' /C calc'!A0")]
    async with browser.http.get(page + "2026-13") as response:
        assert response.status == 400
    async with aiohttp.ClientSession() as http:
        session = {"Authorization": f"Bearer {(await site.link('acct-1')).rpartition('=')[2]}"}
        for path, schema, expected in [
                ("payment-method", "PaymentMethod",
                 {"saved": True, "brand": sample_card("acct-1").brand, "expired": False}),
                ("recharges", "Recharges", {"in_flight": None, "last": None}),
                ("topups", "Topups", {"topups": []})]:
            async with http.get(f"{site.url}/v1/accounts/acct-1/{path}",
                                headers=session) as response:
                body = await response.json()
                assert response.status == 200 and expected.items() <= body.items(), path
                assert_matches(body, schema)
            async with http.get(f"{site.url}/v1/accounts/acct-2/{path}",
                                headers=session) as response:
                assert response.status == 404, path
        async with http.get(f"{site.url}/v1/accounts/acct-1/ledger.csv",
                            headers=session) as response:
            assert "-0.250000" in await response.text()


def _uses(html: str, service: str) -> str:
    found = re.search(rf'<tr data-service="{service}">.*?<td class="num">([0-9]+)</td>', html,
                      re.S)
    assert found is not None, service
    return found.group(1)


async def test_usage_is_shown_in_the_month_it_happened_and_a_call_counts_once(
        site: Site, browser: Browser) -> None:
    now = datetime.now(UTC)
    late = (now.replace(day=1) - timedelta(days=1)).replace(day=15, hour=10, minute=0,
                                                           second=0, microsecond=0)

    def minute(event_id: str, call_id: str, from_s: int, when: datetime) -> RatedUsage:
        detail = RatedDetail("+442071234567", call_id, None, from_s, from_s + 60, 60,
                             100_000, 0, "60/60", None, when)
        return RatedUsage(Charge(event_id, "sw", "acct-1", "call", "GB", 100_000, "EUR",
                                 "flat", detail), when, False, call_id)

    async with site.pool.acquire() as conn:
        # A call of last month billed only now, and one of today sent as two events.
        await apply_usage(conn, [minute("old-1", "c-old", 0, late),
                                 minute("new-1", "c-new", 0, now),
                                 minute("new-2", "c-new", 60, now)])
    _, html = await browser.open(await site.link("acct-1"))
    assert _uses(html, "call") == "1"  # this month: the one call of today, once
    assert late.strftime("%d %b %Y 10:00") in html  # listed at when it happened
    page = f"{site.url}/billing/ledger.csv?page_token={browser.csrf}&month="
    for month, expected in ((late.strftime("%Y-%m"), ["old-1"]),
                            (now.strftime("%Y-%m"), ["new-1", "new-2"])):
        async with browser.http.get(page + month) as response:
            rows = list(csv.DictReader(io.StringIO(await response.text())))
        assert [r["event_id"] for r in rows] == expected, month


async def test_bad_input_and_a_silent_provider_never_break_the_page(
        site: Site, browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    await browser.open(await site.link("acct-1"))
    for token in ("é" * 64, "x" * 5_000, ""):
        browser.csrf = token
        status, body = await browser.call("GET", "/billing/state")
        assert (status, body["error"]["code"]) == (403, "csrf_failed")
    status, html = await browser.open(f"{site.url}/billing")
    for raw in (b"not json", b"[]", b'{"amount": 10, "idempotency_key": "k"}',
                b'{"amount": "10"}', orjson.dumps({"amount": "10", "idempotency_key": "k" * 300})):
        async with browser.http.post(f"{site.url}/billing/pay", data=raw,
                                     headers={CSRF_HEADER: browser.csrf}) as response:
            assert 400 <= response.status < 500, raw
            assert (await response.json())["error"]["code"]
    assert site.provider.charge_calls == 0

    async def silent(_account_id: str) -> None:
        raise TimeoutError("no answer")

    monkeypatch.setattr(site.provider, "payment_method", silent)
    status, html = await browser.open(f"{site.url}/billing")
    assert status == 200 and "cannot be read right now" in html and "12.3456 EUR" in html
    status, state = await browser.call("GET", "/billing/state")
    assert status == 200 and state["pay_blocked"] is None
    async with aiohttp.ClientSession() as http, http.get(
            f"{site.url}/v1/accounts/acct-1/payment-method", headers=AUTH) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "payment_unavailable"


async def test_speech_to_text_on_the_invoice_is_marked_so(site: Site, browser: Browser) -> None:
    store = AccountStore(site.pool)
    await store.set_stt_billing("acct-1", "invoice")
    stt = Charge("job-1", "sw", "acct-1", "stt", None, parse_amount("0.048"), "EUR", "flat")
    call = Charge("call-1", "sw", "acct-1", "call", "FR", parse_amount("0.2"), "EUR", "flat")
    async with site.pool.acquire() as conn:
        await apply_usage(conn, [RatedUsage(stt, datetime.now(UTC), True),
                                 RatedUsage(call, datetime.now(UTC), False)])
    status, html = await browser.open(await site.link("acct-1"))
    assert status == 200
    row = re.search(r'<tr data-service="stt">(.*?)</tr>', html, re.S)
    assert row is not None and "0.048 EUR" in row.group(1)
    assert "billed on invoice" in row.group(1)
    calls = re.search(r'<tr data-service="call">(.*?)</tr>', html, re.S)
    assert calls is not None and "0.20 EUR" in calls.group(1) and "invoice" not in calls.group(1)
    assert ">12.1456 EUR</output>" in html  # the call came out of credit, the job did not
    assert "<td>FR</td>" in html and "on invoice" in html


async def test_the_days_recharge_limit_is_said_when_it_holds_the_account_below(
        site: Site, browser: Browser) -> None:
    # On, below its threshold, and the day's one recharge already made (CONTRACT §12):
    # the page says why no recharge comes, and when the next can.
    await browser.open(await site.link("acct-1"))
    status, _ = await browser.call("PUT", "/billing/auto-recharge",
                                   {"enabled": True, "amount": "20", "below": "10"})
    assert status == 200  # above the threshold: nothing requested
    await site.pool.execute("UPDATE accounts SET auto_recharge_max_per_day = 1,"
                            " balance = $1 WHERE id = 'acct-1'", parse_amount("5"))
    _, state = await browser.call("GET", "/billing/state")
    assert "limit" not in state["parts"]["auto_status"]  # none made today yet
    await site.pool.execute(
        "INSERT INTO recharges (crossing_id, account_id, amount, currency, status, settled_at)"
        " VALUES ('c-1', 'acct-1', $1, 'EUR', 'succeeded', now() - interval '1 hour')",
        parse_amount("20"))
    _, state = await browser.call("GET", "/billing/state")
    said = " ".join(state["parts"]["auto_status"].split())
    assert "The day's limit of 1 automatic recharge is reached: the next can be made" in said

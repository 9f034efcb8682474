"""The billing page (CONTRACT §9) in a real browser, against a running engine with real
PostgreSQL and broker: what a customer sees and does on Account > Billing."""

from __future__ import annotations

import asyncio
import csv
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Locator, Page, expect

from engine.embedded import free_port
from rating.payments.simulated import sample_card
from tests.browser.conftest import RunningEngine
from tests.support import publish_with_librdkafka, usage_event

pytestmark = pytest.mark.browser
LIVE = 20_000  # ms: the page polls every second or two; the engine and the broker add seconds


def balance(page: Page) -> Locator:
    return page.get_by_role("status", name="Credit balance")


async def open_link(context: BrowserContext, link: str) -> Page:
    page = await context.new_page()
    errors: list[str] = []
    requested: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(link)
    await expect(balance(page)).to_be_visible()
    assert page.url.endswith("/billing") and "session=" not in page.url  # the token left
    assert errors == []
    origin = link.partition("/billing")[0] + "/"
    assert [url for url in requested if not url.startswith((origin, "data:"))] == []
    return page


async def calls(engine: RunningEngine, account: str, call_id: str, minutes: range) -> None:
    """One usage.call event per minute of a call to the UK (0.10 EUR a minute)."""
    events = [(account, usage_event(
        "usage.call", f"{call_id}-{m}", account,
        {"call_id": call_id, "destination": "+442071234567", "from_s": m * 60,
         "to_s": (m + 1) * 60})) for m in minutes]
    await asyncio.to_thread(publish_with_librdkafka, ",".join(
        engine.settings.kafka_bootstrap or ()), engine.settings.usage_topic, events)


async def test_open_the_link_see_the_balance_and_pay_once_per_click(
        context: BrowserContext, engine: RunningEngine, shots: Path) -> None:
    account = await engine.account("web-pay", "3.00")
    page = await open_link(context, await engine.link(account))
    await expect(balance(page)).to_have_text("3.00 EUR")
    card = sample_card(account)
    await expect(page.get_by_role("region", name="Card details")).to_contain_text(
        f"{card.brand} ending in {card.last4}")
    await page.get_by_role("radio", name="25.00 EUR").check()
    await page.get_by_role("button", name="Pay Now").click()
    await expect(balance(page)).to_have_text("28.00 EUR", timeout=LIVE)
    await expect(page.locator("#pay-message")).to_contain_text("Paid: 25.00 EUR")
    await page.screenshot(path=shots / "paid.png", full_page=True)
    # A double click is one payment; so is a reload afterwards.
    await page.get_by_role("radio", name="10.00 EUR").check()
    await page.get_by_role("button", name="Pay Now").dblclick()
    await expect(balance(page)).to_have_text("38.00 EUR", timeout=LIVE)
    await page.reload()
    await expect(balance(page)).to_have_text("38.00 EUR")
    assert [p.amount for p in engine.provider.captured(account)] == [25_000_000, 10_000_000]
    assert Decimal((await balance(page).inner_text()).split()[0]) == Decimal(
        await engine.balance(account))
    # The month's ledger as CSV, downloaded from the page.
    async with page.expect_download() as download:
        await page.get_by_role("link", name="(CSV)").click()
    with Path(await (await download.value).path()).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["kind"], r["amount"]) for r in rows] == [("topup", "25.000000"),
                                                      ("topup", "10.000000")]


async def test_automatic_recharge_is_kept_and_lands_when_usage_crosses_the_threshold(
        context: BrowserContext, engine: RunningEngine, shots: Path) -> None:
    account = await engine.account("web-auto", "6.00")
    page = await open_link(context, await engine.link(account))
    switch = page.get_by_role("switch", name="Automatic adding credit")
    amount = page.get_by_role("textbox", name="Add this amount")
    below = page.get_by_role("textbox", name="If balance falls below")
    save = page.get_by_role("button", name="Save and Turn On")
    await expect(switch).not_to_be_checked()
    await switch.check()
    for typed, threshold, amount_error, below_error in [
            ("", "5", "Enter an amount.", None),
            ("0", "five", "Enter an amount greater than zero.",
             "Enter a number, like 20 or 20.50."),
            ("2000000", "5", "Enter at most 1000000.00 EUR.", None)]:
        await amount.fill(typed)
        await below.fill(threshold)
        await save.click()
        await expect(page.locator("#auto-amount-error")).to_have_text(amount_error)
        await expect(amount).to_have_attribute("aria-invalid", "true")
        if below_error is None:
            await expect(page.locator("#auto-below-error")).to_be_hidden()
        else:
            await expect(page.locator("#auto-below-error")).to_have_text(below_error)
    await page.screenshot(path=shots / "validation.png", full_page=True)
    await amount.fill("20")
    await below.fill("5")
    await save.click()
    await expect(page.locator("#part-auto_status")).to_contain_text(
        "Adds 20.00 EUR when the balance falls below 5.00 EUR")
    await page.reload()
    await expect(switch).to_be_checked()
    await expect(amount).to_have_value("20.00")
    await expect(below).to_have_value("5.00")
    # A call in progress lowers the balance on the open page; then it crosses 5.00.
    await calls(engine, account, "c-auto", range(5))
    await expect(balance(page)).to_have_text("5.50 EUR", timeout=LIVE)
    await calls(engine, account, "c-auto", range(5, 11))
    await expect(balance(page)).to_have_text("24.90 EUR", timeout=LIVE)
    await expect(page.locator("#part-auto_status")).to_contain_text(
        "Last recharge: 20.00 EUR")
    await expect(page.get_by_role("region", name="Billing data").get_by_role(
        "row", name="Outbound calls")).to_contain_text("1.10 EUR")
    await page.screenshot(path=shots / "recharged.png", full_page=True)
    await switch.uncheck()
    await expect(page.locator("#part-auto_status")).to_contain_text("Off.")
    assert not (await engine.store.get(account)).auto_recharge_enabled


async def test_a_pending_payment_turns_into_credit_without_a_reload(
        context: BrowserContext, engine: RunningEngine, shots: Path) -> None:
    account = await engine.account("web-pending", "3.00")
    engine.provider.set_behaviour("delay:1", account_id=account)
    page = await open_link(context, await engine.link(account))
    await page.evaluate("window.sameDocument = true")
    await page.get_by_role("radio", name="50.00 EUR").check()
    await page.get_by_role("button", name="Pay Now").click()
    await expect(page.locator("#pay-message")).to_contain_text("your bank may take a while")
    await expect(page.locator("#part-payments")).to_contain_text("50.00 EUR: pending.")
    await page.screenshot(path=shots / "pending.png", full_page=True)
    await expect(balance(page)).to_have_text("53.00 EUR", timeout=LIVE)
    await expect(page.locator("#part-payments")).to_contain_text("50.00 EUR: credited.")
    # The message that said "pending" says what happened instead.
    await expect(page.locator("#pay-message")).to_have_text(
        "Paid: 50.00 EUR added to your credit.")
    assert await page.evaluate("window.sameDocument") is True  # no reload happened


async def test_a_zero_threshold_and_a_recharge_turned_off_by_a_hard_decline(
        context: BrowserContext, engine: RunningEngine) -> None:
    account = await engine.account("web-hard", "3.00")
    engine.provider.set_behaviour("hard_decline", account_id=account)
    page = await open_link(context, await engine.link(account))
    below = page.get_by_role("textbox", name="If balance falls below")
    message = page.locator("#auto-message")
    await page.get_by_role("switch", name="Automatic adding credit").check()
    amount = page.get_by_role("textbox", name="Add this amount")
    await amount.fill("9" * 31)  # more digits than any amount: a field message, not a 500
    await below.fill("1")
    await page.get_by_role("button", name="Save and Turn On").click()
    await expect(page.locator("#auto-amount-error")).to_have_text(
        "Enter at most 1000000.00 EUR.")
    await amount.fill("20")
    await below.fill("0")  # "when the balance falls below zero": allowed, as on the API
    await page.get_by_role("button", name="Save and Turn On").click()
    await expect(page.locator("#part-auto_status")).to_contain_text("falls below 0.00 EUR")
    await page.reload()
    await expect(below).to_have_value("0.00")
    await below.fill("50")  # above the balance: a recharge now, and the card is refused
    await page.get_by_role("button", name="Save and Turn On").click()
    await expect(message).to_have_text("Saved: automatic adding credit is on.")
    await expect(page.locator("#part-auto_status")).to_contain_text(
        "turned off after a failed payment", timeout=LIVE)
    await expect(page.get_by_role("switch", name="Automatic adding credit")).not_to_be_checked()
    await expect(message).to_have_text("")  # no "is on" left beside an "Off"
    await expect(page.locator("#part-auto_status")).to_contain_text(
        "The card was refused for good")  # why, in words, not "Hard decline."


async def test_a_declined_card_and_an_expired_one_say_why(
        context: BrowserContext, engine: RunningEngine, shots: Path) -> None:
    account = await engine.account("web-decline", "3.00")
    engine.provider.set_behaviour("decline", account_id=account)
    page = await open_link(context, await engine.link(account))
    await page.get_by_role("button", name="Pay Now").click()
    await expect(page.locator("#pay-message")).to_have_text(
        "Payment declined: The card was declined.")
    await expect(page.locator("#part-payments")).to_contain_text("10.00 EUR: declined.")
    await expect(balance(page)).to_have_text("3.00 EUR")
    await page.screenshot(path=shots / "declined.png", full_page=True)
    expired = await engine.account("web-expired-card", "-0.40")
    engine.provider.set_card(expired, "expired")
    page = await open_link(context, await engine.link(expired))
    await expect(page.get_by_role("region", name="Card details")).to_contain_text("Expired")
    await expect(page.get_by_role("button", name="Pay Now")).to_be_disabled()
    await expect(page.locator("#part-pay_blocked")).to_contain_text("a payment cannot be made")
    await expect(page.locator("#part-balance_note")).to_contain_text(
        "Your balance is negative")
    await expect(page.get_by_role("link", name="Add credit now")).to_be_visible()
    await page.screenshot(path=shots / "expired-card.png", full_page=True)
    assert engine.provider.captured(account) == engine.provider.captured(expired) == []

    # The provider does not answer: the payment is kept and completed by the engine, so
    # the page must not invite a second payment (a reloaded page pays with a new key).
    silent = await engine.account("web-unanswered", "3.00")
    engine.provider.set_behaviour("unavailable", account_id=silent)
    page = await open_link(context, await engine.link(silent))
    await page.get_by_role("button", name="Pay Now").click()
    await expect(page.locator("#pay-message")).to_contain_text(
        "Your payment of 10.00 EUR is kept and completes by itself")
    await expect(page.locator("#pay-message")).not_to_contain_text("Try again")
    await expect(page.locator("#part-payments")).to_contain_text("10.00 EUR: pending.")
    # Reloaded (a new key), the page still does not take a second payment meanwhile.
    await page.reload()
    await expect(page.get_by_role("button", name="Pay Now")).to_be_disabled()
    await expect(page.locator("#part-pay_blocked")).to_contain_text(
        "Your payment of 10.00 EUR is still being processed")
    assert await engine.pool.fetchval(
        "SELECT count(*) FROM topup_payments WHERE account_id = $1", silent) == 1


async def test_an_expired_or_wrong_link_shows_only_that_it_expired(
        context: BrowserContext, engine: RunningEngine, shots: Path) -> None:
    account = await engine.account("web-expiring", "7.00")
    page = await open_link(context, await engine.link(account, ttl=2))
    await expect(balance(page)).to_have_text("7.00 EUR")
    await expect(page.get_by_role("alert")).to_contain_text("This link has expired",
                                                            timeout=LIVE)
    await expect(page.get_by_role("button", name="Pay Now")).to_be_disabled()
    await page.reload()
    await expect(page.get_by_role("heading", name="This link has expired")).to_be_visible()
    content = await page.content()
    assert account not in content and "7.00" not in content and "EUR" not in content
    await page.screenshot(path=shots / "link-expired.png", full_page=True)
    await page.goto(f"{engine.url}/billing?session=made-up")
    await expect(page.get_by_role("heading", name="This link has expired")).to_be_visible()


async def test_a_second_accounts_data_never_appears(
        context: BrowserContext, engine: RunningEngine) -> None:
    first = await engine.account("web-first", "11.00")
    second = await engine.account("web-second", "22.00")
    page_one = await open_link(context, await engine.link(first))
    page_two = await open_link(context, await engine.link(second))  # same browser, new cookie
    await expect(balance(page_two)).to_have_text("22.00 EUR")
    assert first not in await page_two.content()
    # The first page, still open, stops rather than show the second account.
    await expect(page_one.get_by_role("alert")).to_contain_text("Another billing link",
                                                                timeout=LIVE)
    content = await page_one.content()
    assert second not in content and "22.00" not in content
    await expect(balance(page_one)).to_have_text("11.00 EUR")


async def test_every_control_is_named_labelled_and_works_with_the_keyboard_on_a_phone(
        chromium: Browser, engine: RunningEngine, shots: Path) -> None:
    account = await engine.account("web-a11y", "4.00")
    context = await chromium.new_context(viewport={"width": 375, "height": 740},
                                         is_mobile=True, has_touch=True)
    try:
        page = await open_link(context, await engine.link(account))
        for role, name in [("status", "Credit balance"), ("region", "Card details"),
                           ("switch", "Automatic adding credit"),
                           ("textbox", "Add this amount"), ("textbox", "If balance falls below"),
                           ("button", "Save and Turn On"), ("group", "One-time adding credit"),
                           ("radiogroup", "One-time adding credit"), ("button", "Pay Now"),
                           ("region", "Billing data")]:
            await expect(page.get_by_role(role, name=name, exact=True)).to_have_count(1)
        for amount in ("10.00 EUR", "25.00 EUR", "50.00 EUR", "100.00 EUR"):
            await expect(page.get_by_role("radio", name=amount, exact=True)).to_have_count(1)
        for name in ("Credit balance", "Card details", "Automatic adding credit",
                     "Add this amount", "If balance falls below", "One-time adding credit",
                     "Billing data"):
            await expect(page.get_by_label(name, exact=True)).to_have_count(1)
        unlabelled = await page.evaluate("""() => [...document.querySelectorAll('input')]
            .filter((el) => el.type !== 'hidden' && el.labels.length === 0).map((el) => el.id)""")
        assert unlabelled == []
        cdp = await context.new_cdp_session(page)
        tree = await cdp.send("Accessibility.getFullAXTree")
        controls = {"button", "checkbox", "switch", "radio", "textbox", "link", "combobox"}
        nameless = [node["role"]["value"] for node in tree["nodes"]
                    if not node.get("ignored") and node.get("role", {}).get("value") in controls
                    and not node.get("name", {}).get("value")]
        assert nameless == []
        assert await page.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
        await page.screenshot(path=shots / "phone.png", full_page=True)
        # Keyboard only: to the amounts, the next one with an arrow key, Tab, Enter.
        await page.get_by_role("radio", name="10.00 EUR").focus()
        await page.keyboard.press("ArrowRight")
        await expect(page.get_by_role("radio", name="25.00 EUR")).to_be_checked()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("button", name="Pay Now")).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(balance(page)).to_have_text("29.00 EUR", timeout=LIVE)
        # The keyboard is where it was, not thrown back to the top of the page.
        await expect(page.get_by_role("button", name="Pay Now")).to_be_focused()
    finally:
        await context.close()


async def test_a_link_followed_from_another_site_opens_the_page(
        context: BrowserContext, engine: RunningEngine) -> None:
    """An e-mail's link: the SameSite=Strict cookie is set on a cross-site navigation."""
    account = await engine.account("web-mail", "8.00")
    link = await engine.link(account)

    async def mail(_request: web.Request) -> web.Response:
        return web.Response(text=f'<a href="{link}">Open your billing page</a>',
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", mail)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        page = await context.new_page()
        await page.goto(f"http://localhost:{port}/")  # another site than 127.0.0.1
        await page.get_by_role("link", name="Open your billing page").click()
        await expect(balance(page)).to_have_text("8.00 EUR")
        assert page.url == f"{engine.url}/billing"
    finally:
        await runner.cleanup()

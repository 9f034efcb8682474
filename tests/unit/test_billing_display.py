"""Amounts as the billing page shows them, the one-time presets, the form's field checks,
and the simulated provider's saved cards."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.billing_page import field_error
from api.billing_view import reason_text
from rating.core.currency import (
    DEFAULT_PRESETS,
    display_amount,
    display_money,
    parse_presets,
    presets_for,
)
from rating.core.money import BALANCE_BOUND, MICRO, format_amount
from rating.payments.provider import ChargeRequest, PaymentMethod
from rating.payments.simulated import SimulatedProvider, sample_card
from rating.settings import Settings, SettingsError


@pytest.mark.parametrize(("micros", "currency", "shown"), [
    (12_345_600, "EUR", "12.3456"),
    (12_000_000, "EUR", "12.00"),
    (-500_000, "USD", "-0.50"),
    (0, "GBP", "0.00"),
    (1_200_000_000, "JPY", "1200"),
    (1_200_500_000, "JPY", "1200.5"),
    (1_000, "KWD", "0.001"),
    (7, "EUR", "0.000007"),
    (-7, "BHD", "-0.000007"),
])
def test_amounts_keep_the_currencys_decimals_and_every_other_digit(
        micros: int, currency: str, shown: str) -> None:
    assert display_amount(micros, currency) == shown
    assert display_money(micros, currency) == f"{shown} {currency}"


@given(st.integers(-BALANCE_BOUND, BALANCE_BOUND), st.sampled_from(["EUR", "JPY", "KWD"]))
def test_a_shown_amount_is_the_apis_amount(micros: int, currency: str) -> None:
    assert Decimal(display_amount(micros, currency)) == Decimal(format_amount(micros))


def test_presets_per_currency_with_defaults() -> None:
    presets = parse_presets("eur:5, 20,10;JPY:1000,3000")
    assert presets == {"EUR": (5 * MICRO, 10 * MICRO, 20 * MICRO),
                       "JPY": (1000 * MICRO, 3000 * MICRO)}
    assert presets_for("JPY", presets) == (1000 * MICRO, 3000 * MICRO)
    assert presets_for("USD", presets) == DEFAULT_PRESETS == tuple(
        n * MICRO for n in (10, 25, 50, 100))
    settings = Settings.from_env({"RATING_TOPUP_PRESETS": "GBP:5,15"})
    assert settings.topup_presets == (("GBP", (5 * MICRO, 15 * MICRO)),)
    assert Settings.from_env({}).topup_presets == ()


@pytest.mark.parametrize("bad", ["EUR", "EURO:10", "EUR:10;EUR:20", "EUR:0", "EUR:-5",
                                 "EUR:ten", "EUR:1.0000001", "EUR:1000000.01",
                                 "EUR:1,2,3,4,5,6,7,8,9", "€€€:10", "EUR:10.005",
                                 "JPY:1000.5"])
def test_bad_presets_fail_at_start_up_naming_the_variable(bad: str) -> None:
    with pytest.raises(SettingsError, match=r"^RATING_TOPUP_PRESETS: "):
        Settings.from_env({"RATING_TOPUP_PRESETS": bad})


@pytest.mark.parametrize(("typed", "expected"), [
    ("20", (20 * MICRO, None)),
    (" 20.50 ", (20_500_000, None)),
    ("1000000", (1_000_000 * MICRO, None)),
    ("", (None, "Enter an amount.")),
    ("   ", (None, "Enter an amount.")),
    (None, (None, "Enter an amount.")),
    (20, (None, "Enter an amount.")),
    ("0", (None, "Enter an amount greater than zero.")),
    ("0.000", (None, "Enter an amount greater than zero.")),
    ("-5", (None, "Enter an amount greater than zero.")),
    ("twenty", (None, "Enter a number, like 20 or 20.50.")),
    ("20,50", (None, "Enter a number, like 20 or 20.50.")),
    ("1e3", (None, "Enter a number, like 20 or 20.50.")),
    ("٢٠", (None, "Enter a number, like 20 or 20.50.")),
    ("1.0000001", (None, "Use at most 2 decimals, like 20.50.")),
    ("0.001", (None, "Use at most 2 decimals, like 20.50.")),  # a card pays whole cents
    ("20.505", (None, "Use at most 2 decimals, like 20.50.")),
    ("20.500", (20_500_000, None)),
    ("1000000.01", (None, "Enter at most 1000000.00 EUR.")),
])
def test_the_forms_amounts_are_checked_with_a_message_for_each_mistake(
        typed: object, expected: tuple[int | None, str | None]) -> None:
    assert field_error(typed, "EUR") == expected


def test_a_threshold_may_be_zero_and_amounts_follow_the_currencys_units() -> None:
    assert field_error("0", "EUR", zero_ok=True) == (0, None)
    assert field_error("0.00", "EUR", zero_ok=True) == (0, None)
    assert field_error("-1", "EUR", zero_ok=True) == (None, "Enter 0 or more.")
    assert field_error("1000", "JPY") == (1000 * MICRO, None)
    assert field_error("1000.5", "JPY") == (None, "Enter whole JPY amounts, like 20.")
    assert field_error("1.005", "KWD") == (1_005_000, None)


def test_decline_reasons_read_as_sentences() -> None:
    assert reason_text("card_declined") == "The card was declined."
    assert reason_text("expired_card") == "The card has expired."
    assert reason_text("do_not_honor") == "Do not honor."
    assert reason_text(None) == "The payment was declined."


def test_cards_expire_after_their_last_month() -> None:
    card = PaymentMethod("Visa", "4242", 2, 2027)
    assert card.expiry == "02/2027"
    assert not card.expired(date(2027, 2, 28)) and card.expired(date(2027, 3, 1))
    for brand, last4, month, year in [("Visa", "424", 1, 2030), ("Visa", "42a2", 1, 2030),
                                      ("Visa", "4242", 13, 2030), ("Visa", "4242", 1, 30)]:
        with pytest.raises(ValueError):
            PaymentMethod(brand, last4, month, year)


async def test_the_simulated_provider_has_a_card_per_account_unless_told_otherwise() -> None:
    provider = SimulatedProvider()
    first = await provider.payment_method("acct-1")
    assert first == sample_card("acct-1") == await provider.payment_method("acct-1")
    assert first is not None and not first.expired(date(2030, 1, 1))
    others = {await provider.payment_method(f"acct-{i}") for i in range(20)}
    assert len({(c.brand, c.last4) for c in others if c is not None}) > 10
    provider.set_card("acct-2", "expired")
    provider.set_card("acct-3", "none")
    expired = await provider.payment_method("acct-2")
    assert expired is not None and expired.expired(date(2026, 11, 29))
    assert await provider.payment_method("acct-3") is None
    for account, reason in [("acct-2", "expired_card"), ("acct-3", "no_payment_method")]:
        result = await provider.charge(ChargeRequest(account, MICRO, "EUR", f"k-{account}"))
        assert (result.status, result.reason) == ("declined", reason)
    assert (await provider.charge(ChargeRequest("acct-1", MICRO, "EUR", "k"))).status == \
        "succeeded"
    provider.set_card("acct-3", "test")
    assert await provider.payment_method("acct-3") == sample_card("acct-3")
    with pytest.raises(ValueError):
        provider.set_card("acct-1", "gold")  # type: ignore[arg-type]

"""What a caller may give: amount rules and their patterns, account ids, storable text,
the ledger keys of credits, and the settings that bound them."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rating.core.amount_rules import AmountRule, AmountSign
from rating.core.errors import InvalidRequest
from rating.core.identifiers import (
    ACCOUNT_ID_PATTERN,
    check_account_id,
    check_text,
    credit_key,
    is_account_id,
    unstorable,
)
from rating.core.money import BALANCE_BOUND, DEFAULT_MAX_AMOUNT, MICRO, parse_amount
from rating.settings import Settings, SettingsError

SIGNS: tuple[AmountSign, ...] = ("positive", "non_negative", "non_zero", "signed")
MAXIMA = (DEFAULT_MAX_AMOUNT, 1, 999_999, 1_000_000, 2_500_000, 123_456_789, BALANCE_BOUND)

# Strings near every edge of the grammar and the bounds: signs, leading zeros, 0..7
# decimals, whole parts around the maxima.
_digits = st.text("0123456789", min_size=1, max_size=20)
_near = st.sampled_from(["0", "00", "1", "2", "9", "122", "123", "124", "999999", "1000000",
                         "1000001", "1000000000000", "1000000000001", "0001000000"])
amount_texts = st.builds(
    lambda sign, whole, frac: sign + whole + ("" if frac is None else "." + frac),
    st.sampled_from(["", "", "-", "+"]), st.one_of(_near, _digits),
    st.one_of(st.none(), st.text("0123456789", max_size=7),
              st.sampled_from(["456789", "45678", "456788", "45679", "000001", "0000001"])))


def admitted(rule: AmountRule, text: str) -> bool:
    try:
        return rule.admits(parse_amount(text))
    except ValueError:
        return False


@pytest.mark.parametrize("maximum", MAXIMA)
@pytest.mark.parametrize("sign", SIGNS)
@given(text=amount_texts)
@example(text="-0")
@example(text="0.000000")
@example(text="1000000.000001")
def test_the_pattern_matches_exactly_the_amounts_the_rule_admits(
        sign: AmountSign, maximum: int, text: str) -> None:
    rule = AmountRule(sign, maximum)
    assert (re.fullmatch(rule.pattern(), text) is not None) == admitted(rule, text)


@pytest.mark.parametrize("sign", SIGNS)
@given(data=st.data())
def test_every_string_the_pattern_generates_is_admitted(sign: AmountSign,
                                                        data: st.DataObject) -> None:
    # What a client generated from the document sends: the server takes it.
    rule = AmountRule(sign, DEFAULT_MAX_AMOUNT)
    text = data.draw(st.from_regex(rule.pattern(), fullmatch=True))
    assert admitted(rule, text), text


def test_rules_name_their_bound_and_refuse_with_invalid_amount() -> None:
    rule = AmountRule("positive", DEFAULT_MAX_AMOUNT)
    assert rule.check("amount", 1) == 1
    with pytest.raises(InvalidRequest) as caught:
        rule.check("amount", DEFAULT_MAX_AMOUNT + 1)
    assert caught.value.code == "invalid_amount"
    assert "at most 1000000.000000" in caught.value.message
    with pytest.raises(ValueError, match="maximum"):
        AmountRule("positive", BALANCE_BOUND + 1)
    assert AmountRule("non_zero", 5).admits(-5) and not AmountRule("non_zero", 5).admits(0)
    assert AmountRule("signed", 5).admits(0) and not AmountRule("signed", 5).admits(-6)


@pytest.mark.parametrize(("text", "valid"), [
    ("acct-42", True), ("A.b_c:d-9", True), ("a" * 128, True), ("x", True),
    ("", False), ("a" * 129, False), ("a/b", False), ("a b", False), ("acct\n", False),
    ("kundé", False), ("a%2Fb", False), ("a\x00", False), ("١٢٣", False),
])
def test_account_ids_follow_the_contract_rule(text: str, valid: bool) -> None:
    assert is_account_id(text) is valid
    # The same rule, as written into the CHECK and the OpenAPI document.
    assert (re.fullmatch(ACCOUNT_ID_PATTERN, text) is not None) is valid
    if not valid:
        with pytest.raises(InvalidRequest) as caught:
            check_account_id(text)
        assert caught.value.code == "invalid_account"


def test_text_postgresql_cannot_store_is_refused() -> None:
    assert unstorable("a reason") is None
    assert "U+0000" in (unstorable("a\x00b") or "")
    assert "surrogate" in (unstorable("a\udc80b") or "")
    for bad in ("a\x00b", "\ud800", "", "x" * 11):
        with pytest.raises(InvalidRequest) as caught:
            check_text("reason", bad, max_length=10)
        assert caught.value.code == "invalid_text" and "reason" in caught.value.message


@given(a=st.text(), b=st.text(), c=st.text(), d=st.text())
@example(a="a", b="b/c", c="a/b", d="c")  # the collision of the concatenated keys
@example(a="a%2Fb", b="c", c="a/b", d="c")
def test_credit_keys_of_distinct_pairs_are_distinct(a: str, b: str, c: str, d: str) -> None:
    assert (credit_key(a, b) == credit_key(c, d)) == ((a, b) == (c, d))


@given(account_id=st.from_regex(ACCOUNT_ID_PATTERN, fullmatch=True), key=st.text())
def test_credit_keys_of_valid_ids_are_the_keys_written_before(account_id: str, key: str) -> None:
    # Rows credited as f"{account_id}/{key}" keep answering replays.
    assert credit_key(account_id, key) == f"{account_id}/{key}"


def test_max_amount_and_payment_settings_are_read_and_checked() -> None:
    assert Settings.from_env({}).max_amount == DEFAULT_MAX_AMOUNT == 1_000_000 * MICRO
    assert Settings.from_env({}).payment_simulation is None
    settings = Settings.from_env({"RATING_MAX_AMOUNT": "2500.50",
                                  "RATING_PAYMENT_SIMULATION": "delay:2",
                                  "RATING_MIGRATE_DATABASE_URL": "postgresql://owner@db/r"})
    assert settings.max_amount == 2_500_500_000
    assert settings.payment_simulation == "delay:2"
    assert settings.migrate_database_url == "postgresql://owner@db/r"
    assert Settings.from_env({"RATING_MAX_AMOUNT": "1000000000000"}).max_amount == BALANCE_BOUND


@pytest.mark.parametrize(("name", "value"), [
    ("RATING_MAX_AMOUNT", "0"),
    ("RATING_MAX_AMOUNT", "-5"),
    ("RATING_MAX_AMOUNT", "1000000000000.000001"),  # past the balance bound
    ("RATING_MAX_AMOUNT", "1e6"),
    ("RATING_PAYMENT_SIMULATION", "sometimes"),
    ("RATING_PAYMENT_SIMULATION", "delay:-1"),
    ("RATING_MIGRATE_DATABASE_URL", "sqlite:///x"),
])
def test_a_bad_bound_or_provider_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    assert repr(value) in message

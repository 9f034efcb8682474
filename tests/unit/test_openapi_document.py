"""schemas/openapi.json states the rules the server enforces, from the same constants."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from api.accounts import OPENAPI_CANDIDATES
from api.openapi_doc import AMOUNT_RULE_KEY, openapi_document, with_amount_bounds
from api.request_values import (
    BODY_KEY_PATTERN,
    DIRECTIONS,
    HEADER_KEY_PATTERN,
    NUMBER_PATTERN,
    REASON_PATTERN,
)
from rating.core.amount_rules import AmountRule
from rating.core.errors import InvalidRequest
from rating.core.identifiers import ACCOUNT_ID_PATTERN, MAX_KEY_LENGTH, MAX_REASON_LENGTH
from rating.core.money import DEFAULT_MAX_AMOUNT
from rating.stores.billing_reads import month_bounds
from rating.stores.statements import month_bounds as statement_month_bounds

RAW = OPENAPI_CANDIDATES[0].read_bytes()
DOC: dict[str, Any] = orjson.loads(RAW)
SCHEMAS = DOC["components"]["schemas"]


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in DOC["paths"].items()
            for method, op in item.items() if method != "parameters"]


def test_the_file_holds_the_default_bounds_so_serving_it_by_default_changes_nothing() -> None:
    assert with_amount_bounds(copy.deepcopy(DOC), DEFAULT_MAX_AMOUNT) == DOC
    marked = {name: s[AMOUNT_RULE_KEY] for name, s in SCHEMAS.items() if AMOUNT_RULE_KEY in s}
    assert marked == {"PositiveAmount": "positive", "NonNegativeAmount": "non_negative",
                      "NonZeroAmount": "non_zero"}


def test_a_configured_maximum_is_the_bound_served() -> None:
    served = orjson.loads(openapi_document(RAW, 250_000_000))
    pattern = served["components"]["schemas"]["PositiveAmount"]["pattern"]
    assert pattern == AmountRule("positive", 250_000_000).pattern()
    assert "at most 250.000000" in served["components"]["schemas"]["PositiveAmount"][
        "description"]


def test_request_fields_carry_the_server_rules() -> None:
    assert SCHEMAS["AccountId"]["pattern"] == ACCOUNT_ID_PATTERN
    assert SCHEMAS["Reason"]["pattern"] == REASON_PATTERN
    assert SCHEMAS["Reason"]["maxLength"] == MAX_REASON_LENGTH
    assert SCHEMAS["IdempotencyKey"]["pattern"] == BODY_KEY_PATTERN
    amounts = {
        "TopupRequest": SCHEMAS["TopupRequest"]["properties"]["amount"],
        "AutoRecharge.amount": SCHEMAS["AutoRechargeRequest"]["oneOf"][0]["properties"][
            "amount"],
        "AutoRecharge.below": SCHEMAS["AutoRechargeRequest"]["oneOf"][0]["properties"]["below"],
        "Adjustment": SCHEMAS["AdjustmentRequest"]["properties"]["amount"],
    }
    assert {name: ref["$ref"].rpartition("/")[2] for name, ref in amounts.items()} == {
        "TopupRequest": "PositiveAmount", "AutoRecharge.amount": "PositiveAmount",
        "AutoRecharge.below": "NonNegativeAmount", "Adjustment": "NonZeroAmount"}
    for path, _method, op in operations():
        for param in op.get("parameters", []):
            if param["name"] == "Idempotency-Key":
                assert param["schema"]["pattern"] == HEADER_KEY_PATTERN, path
    for branch in SCHEMAS["ReservationRequest"]["oneOf"]:  # the usage events' key rule
        for key in ("source", "call_id"):
            assert branch["properties"][key]["pattern"] == (
                rf"^[^\u0000]{{1,{MAX_KEY_LENGTH}}}$")
    query = {p["name"]: p["schema"] for p in
             DOC["paths"]["/v1/accounts/{account_id}/authorize"]["get"]["parameters"]}
    assert query["destination"]["pattern"] == query["number"]["pattern"] == NUMBER_PATTERN
    assert tuple(query["direction"]["enum"]) == DIRECTIONS
    ledger = {p["name"]: p["schema"] for p in
              DOC["paths"]["/v1/accounts/{account_id}/ledger"]["get"]["parameters"]}
    assert (ledger["limit"]["minimum"], ledger["limit"]["maximum"]) == (1, 500)
    assert (ledger["before"]["minimum"], ledger["before"]["maximum"]) == (1, 2**63 - 1)
    for path, item in DOC["paths"].items():
        if "{account_id}" in path:
            [param] = [p for p in item["parameters"] if p["name"] == "account_id"]
            assert param["schema"] == {"$ref": "#/components/schemas/AccountId"}, path


@pytest.mark.parametrize(("path", "method", "op"), operations(),
                         ids=[f"{m.upper()} {p}" for p, m, _ in operations()])
def test_every_v1_call_needs_a_bearer_token_and_says_what_it_answers(
        path: str, method: str, op: dict[str, Any]) -> None:
    assert DOC["security"] == [{"bearer": []}]
    assert DOC["components"]["securitySchemes"]["bearer"] == {"type": "http",
                                                              "scheme": "bearer"}
    if not path.startswith("/v1/"):
        assert op["security"] == []  # the probes and this document are open
        return
    assert op.get("security", DOC["security"]) == [{"bearer": []}]
    assert {"401", "403", "404", "503"} <= set(op["responses"])
    if "requestBody" in op:
        assert {"400", "413", "422"} <= set(op["responses"])
    retry_after = DOC["components"]["responses"]["E503"]["headers"]["Retry-After"]
    assert retry_after["required"] is True


@pytest.mark.parametrize(("path", "bounds"), [
    ("/v1/accounts/{account_id}/ledger.csv", month_bounds),
    ("/v1/accounts/{account_id}/statement", statement_month_bounds)])
def test_month_patterns_are_the_months_the_server_reads(
        path: str, bounds: Callable[[str], object]) -> None:
    [param] = [p for p in DOC["paths"][path]["get"]["parameters"] if p["name"] == "month"]
    pattern = re.compile(param["schema"]["pattern"])
    for year in [*range(0, 30), *range(990, 1010), *range(9980, 10000)]:
        for month in range(0, 14):
            text = f"{year:04d}-{month:02d}"
            try:
                bounds(text)
                readable = True
            except (ValueError, InvalidRequest):
                readable = False
            assert (pattern.fullmatch(text) is not None) is readable, text

"""The OpenAPI document as served: ``schemas/openapi.json`` with this server's amount bounds.

Amount schemas carry ``x-amount-rule`` (``positive``, ``non_negative``, ``non_zero``);
their ``pattern`` and ``description`` are those of ``RATING_MAX_AMOUNT``. The file
holds them for the default maximum (a test checks that serving it with the default
changes nothing), so a document read from the repository tells the truth too.
"""

from __future__ import annotations

from typing import Any, get_args

import orjson

from rating.core.amount_rules import AmountRule, AmountSign

AMOUNT_RULE_KEY = "x-amount-rule"


def amount_schema(sign: AmountSign, max_amount: int) -> dict[str, str]:
    rule = AmountRule(sign, max_amount)
    return {"pattern": rule.pattern(),
            "description": f"Decimal string with up to 6 decimals, {rule.description}"
                           " (the largest single amount, RATING_MAX_AMOUNT)."}


def with_amount_bounds(doc: dict[str, Any], max_amount: int) -> dict[str, Any]:
    """``doc`` with every amount schema's pattern and description set for ``max_amount``."""
    for schema in doc.get("components", {}).get("schemas", {}).values():
        sign = schema.get(AMOUNT_RULE_KEY)
        if sign in get_args(AmountSign):
            schema.update(amount_schema(sign, max_amount))
    return doc


def openapi_document(raw: bytes, max_amount: int) -> bytes:
    return orjson.dumps(with_amount_bounds(orjson.loads(raw), max_amount))

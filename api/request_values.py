"""The values a request may carry, checked as the OpenAPI document states them.

Each rule here is also written into ``schemas/openapi.json`` (the amount patterns are
generated from ``RATING_MAX_AMOUNT`` when the document is served), and a test holds
the document to these constants: what the document allows, the server accepts, and
what the server refuses, the document does not allow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from api.http_json import Handler, amount_field, field
from rating.core.amount_rules import AmountRule, AmountSign
from rating.core.errors import ApiError, InvalidRequest
from rating.core.identifiers import (
    ACCOUNT_ID_RULE,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_REASON_LENGTH,
    check_text,
    is_account_id,
)

# Python's str.isspace() characters, spelled out: JSON Schema's \s (ECMA 262) is another set.
BLANK_CHARACTERS = (r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
                    r"\u3000")
# A reason: at most MAX_REASON_LENGTH characters (maxLength), not blank, no U+0000.
REASON_PATTERN = rf"^[^\u0000]*[^\u0000{BLANK_CHARACTERS}][^\u0000]*$"
# An idempotency key in the body: 1-255 characters, no U+0000.
BODY_KEY_PATTERN = rf"^[^\u0000]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}$"
# In the Idempotency-Key header: visible ASCII, spaces inside (HTTP trims the ends).
HEADER_KEY_PATTERN = rf"^[!-~](?:[ -~]{{0,{MAX_IDEMPOTENCY_KEY_LENGTH - 2}}}[!-~])?$"
_HEADER_KEY = re.compile(HEADER_KEY_PATTERN)
# A number in the authorize query: E.164, its '+' sent encoded, as a space (an unencoded
# '+'), or left out.
NUMBER_PATTERN = r"^[+ ]?[0-9]{6,15}$"
_NUMBER = re.compile(NUMBER_PATTERN, re.ASCII)
DIRECTIONS = ("inbound", "outbound")


@web.middleware
async def account_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A path's ``{account_id}`` outside the account-id rule names no account: 404."""
    account_id = request.match_info.get("account_id")
    if account_id is not None and not is_account_id(account_id):
        raise ApiError(404, "unknown_account",
                       f"no such account: account ids are {ACCOUNT_ID_RULE}")
    return await handler(request)


class Amounts:
    """The amount rules of one server, bounded by its largest single amount."""

    def __init__(self, max_amount: int) -> None:
        self.max_amount = max_amount

    def rule(self, sign: AmountSign) -> AmountRule:
        return AmountRule(sign, self.max_amount)

    def field(self, body: dict[str, Any], name: str, sign: AmountSign) -> int:
        """``400`` when not a decimal string, ``422`` when outside the rule."""
        return self.rule(sign).check(name, amount_field(body, name))


def reason_field(body: dict[str, Any], name: str = "reason") -> str:
    reason = check_text(name, field(body, name, str), max_length=MAX_REASON_LENGTH).strip()
    if not reason:
        raise InvalidRequest(f"{name}: must not be blank", code="invalid_adjustment")
    return reason


def idempotency_key(request: web.Request, body: dict[str, Any]) -> str:
    """The key from the body or the ``Idempotency-Key`` header (equal if both are given)."""
    if "idempotency_key" in body and body["idempotency_key"] is None:
        raise ApiError(400, "invalid_field", "idempotency_key: expected str, got null")
    in_body = field(body, "idempotency_key", str, required=False)
    in_header = request.headers.get("Idempotency-Key")
    if in_body is not None and in_header is not None and in_body != in_header:
        raise ApiError(400, "invalid_field",
                       "idempotency_key and the Idempotency-Key header differ")
    key = in_body if in_body is not None else in_header
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ApiError(400, "missing_field",
                       "idempotency_key (or an Idempotency-Key header) of 1-255"
                       " characters is required")
    if in_header is not None and not _HEADER_KEY.fullmatch(in_header):
        raise InvalidRequest("Idempotency-Key: visible ASCII characters only (spaces inside);"
                             " other keys go in the body's idempotency_key",
                             code="invalid_text")
    return check_text("idempotency_key", key, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)


def check_authorize_query(query: Mapping[str, str]) -> None:
    """Every parameter given is checked, whether or not the service uses it."""
    for name in ("destination", "number"):
        value = query.get(name)
        if value is not None and not _NUMBER.fullmatch(value):
            raise ApiError(400, "invalid_query",
                           f"{name}: expected an E.164 number such as +442071234567")
    direction = query.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise ApiError(400, "invalid_query", "direction: expected inbound or outbound")

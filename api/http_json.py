"""JSON over HTTP for the account API: error bodies, request bodies and query values.

Every error leaves as ``{"error": {"code", "message"}}`` with a 4xx/5xx status, whatever
raised it (an ``ApiError``, aiohttp's routing, a ``RatingError``, or a bug).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from rating.core.errors import (
    ApiError,
    RatingError,
    RequestError,
    TransientError,
    UnknownAccount,
    describe,
)
from rating.core.money import parse_amount
from rating.stores.db import is_transient

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
# A 503 says when to ask again, and only which dependency is down: host names and
# library words stay in the logs.
RETRY_AFTER_SECONDS = "5"
_UNAVAILABLE = {
    "store_unavailable": "the database is unavailable; retry later",
    "broker_unavailable": "the message broker is unavailable; retry later",
    "payment_unavailable": "the payment provider did not answer; retry with the same"
                           " idempotency key",
}


def unavailable_response(code: str) -> web.Response:
    message = _UNAVAILABLE.get(code, "a dependency is unavailable; retry later")
    response = error_response(503, code, message)
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status)


def _status_of(exc: RatingError) -> int:
    if isinstance(exc, UnknownAccount):
        return 404
    if isinstance(exc, RequestError):
        return exc.status
    return 422


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except web.HTTPException as exc:  # routing and body-size errors raised by aiohttp
        if exc.status < 400:
            raise
        response = error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"),
                                  exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except TransientError as exc:
        log.warning("%s %s: %s", request.method, request.path, exc.message)
        return unavailable_response(exc.code)
    except RatingError as exc:
        return error_response(_status_of(exc), exc.code, exc.message)
    except Exception as exc:
        if is_transient(exc):  # the database dropped, refused or timed out
            log.warning("%s %s: database unavailable (%s)", request.method, request.path,
                        describe(exc))
            return unavailable_response("store_unavailable")
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error")


# --- decoding request input ------------------------------------------------------------

async def json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if allow_empty and not raw:  # no body at all; whitespace is not JSON, as the document says
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, "missing_field", f"{name}: required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, "invalid_field", f"{name}: expected {kind.__name__}")
    return value


def int_field(body: dict[str, Any], name: str) -> int:
    """An integer, as JSON Schema counts them: ``1.0`` is the integer 1 (never a bool)."""
    value = body.get(name)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    result: int = field(body, name, int)
    return result


def amount_field(body: dict[str, Any], name: str) -> int:
    text = field(body, name, str)
    try:
        return parse_amount(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_amount", f"{name}: {exc}") from None


def int_query(request: web.Request, name: str, default: int | None, low: int,
               high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:  # given but empty is not an integer: refused as the document says
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_query", f"{name}: expected an integer {low}..{high}")
    return int(raw)


# RFC 3339 date-time (JSON Schema's "date-time"): a date, T, a time and an offset.
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
                      r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})", re.ASCII)


def since_query(request: web.Request) -> datetime | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    text = raw.replace(" ", "+")  # a '+' sent unencoded arrives as a space
    try:
        if not _RFC3339.fullmatch(text):
            raise ValueError(text)
        when = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ApiError(400, "invalid_query", "since: expected an RFC 3339 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)

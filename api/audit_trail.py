"""Every write through the API leaves an audit row: who, what, which account, outcome.

A middleware, so that no handler can forget it: it runs around each ``/v1`` request
that is not a read, and each write of the billing page (``/billing/…``, actor
``session:ACCOUNT``), once the caller is authenticated (unauthenticated attempts are
refused before anything is written, and only counted, so that they cannot fill
the table). The outcome is the HTTP status and, for an error, its code.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from api.access import PRINCIPAL_KEY, F
from api.http_json import Handler
from rating.stores import audit

log = logging.getLogger(__name__)
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUDITED = ("/v1/", "/billing/")
_OWN_RECORD = "__rating_own_record__"


def own_record(handler: F) -> F:
    """Declare a write route whose rows are their own record, and too frequent for the
    trail: a voice switch's credit reservations (several per call; each row keeps its
    source, times and grants). The audit trail stays a trail of people's actions."""
    setattr(handler, _OWN_RECORD, True)
    return handler


def _outcome(response: web.StreamResponse) -> str:
    if response.status < 400 or not isinstance(response, web.Response):
        return str(response.status)
    try:
        body = orjson.loads(response.body) if isinstance(response.body, bytes) else {}
        code = body["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return str(response.status)
    return f"{response.status} {code}"


async def _detail(request: web.Request) -> dict[str, Any]:
    detail: dict[str, Any] = {"method": request.method, "path": request.path}
    if request.query_string:
        detail["query"] = request.query_string
    try:
        raw = await request.read()  # already read (and cached) by the handler, if at all
    except Exception:  # the body itself was refused (too large): the outcome says so
        return detail
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        detail["body"] = body
    return detail


def audit_writes(pool: asyncpg.Pool) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        principal = request.get(PRINCIPAL_KEY)
        if (request.method in _READS or not request.path.startswith(_AUDITED)
                or principal is None or getattr(request.match_info.handler, _OWN_RECORD, False)):
            return response
        route = request.match_info.route
        action = route.name or f"{request.method} {request.path}"
        try:
            await audit.record(pool, actor=principal.name, action=action,
                               account_id=(request.match_info.get("account_id")
                                           or principal.account_id),
                               outcome=_outcome(response), detail=await _detail(request))
        except Exception as exc:  # the write itself is done; say loudly that its trail is not
            log.error("audit row for %s %s by %s not written: %s", request.method,
                      request.path, principal.name, type(exc).__name__)
        return response

    return middleware

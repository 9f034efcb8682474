"""Explaining charges over HTTP: one event's fate (CONTRACT §13) and monthly statements.

``GET /v1/events/{source}/{event_id}`` answers as ``rating-engine events show`` does,
for the operator; ``GET /v1/accounts/{account_id}/statement?month=YYYY-MM`` as
``accounts statement`` does, for the operator or that account's session, in JSON or
CSV (``?format=csv`` or ``Accept: text/csv``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from api.access import CUSTOMER, OPERATOR, requires
from api.http_json import json_response
from rating.core.dlq import DlqRecord
from rating.core.errors import ApiError, InvalidRequest
from rating.stores.explain import applied_event, check_event_key
from rating.stores.statements import current_month, monthly_statement

# Finds the last DLQ record of the event (source, id), or None.
DlqSearch = Callable[[str, str], Awaitable[DlqRecord | None]]


class ExplainRoutes:
    def __init__(self, pool: asyncpg.Pool, dlq_search: DlqSearch | None) -> None:
        self._pool = pool
        self._dlq_search = dlq_search
        # A DLQ search reads the whole topic with a consumer of its own: a few at a time.
        self._searches = asyncio.Semaphore(2)

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/events/{source}/{event_id}", self.show_event,
                           allow_head=False, name="event.read")
        app.router.add_get("/v1/accounts/{account_id}/statement", self.statement,
                           allow_head=False, name="statement.read")

    @requires(OPERATOR)
    async def show_event(self, request: web.Request) -> web.Response:
        source, event_id = request.match_info["source"], request.match_info["event_id"]
        try:
            check_event_key(source, event_id)
        except InvalidRequest as exc:
            raise ApiError(400, exc.code, exc.message) from None
        async with self._pool.acquire() as conn:
            answer = await applied_event(conn, source, event_id)
        if answer is None and self._dlq_search is not None:
            async with self._searches:
                record = await self._dlq_search(source, event_id)
            answer = record.refused() if record is not None else None
        return json_response(answer or {"status": "not_found"})

    @requires(CUSTOMER)
    async def statement(self, request: web.Request) -> web.Response:
        given = request.query.get("month")  # given but empty is not YYYY-MM: refused
        month = current_month() if given is None else given
        wants = request.query.get("format")
        if wants not in (None, "json", "csv"):
            raise ApiError(400, "invalid_query", "format: expected json or csv")
        as_csv = wants == "csv" or (
            wants is None and "text/csv" in request.headers.get("Accept", ""))
        try:
            statement = await monthly_statement(self._pool, request.match_info["account_id"],
                                                month)
        except InvalidRequest as exc:
            raise ApiError(400, "invalid_query", exc.message) from None
        if not as_csv:
            return json_response(statement.as_json())
        filename = f"statement-{statement.month}.csv"
        return web.Response(
            text=statement.as_csv(), content_type="text/csv", charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'})

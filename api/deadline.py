"""Reads that a hung database holds answer 503 within seconds, not after a minute.

A database that neither answers nor refuses holds a query until asyncpg's command
timeout (60 s), and cancelling the query waits for the server too. So the reads below
wait at most their deadline: past it the client gets the outage answer (503
``store_unavailable`` with ``Retry-After``) and the request's work is cancelled without
being waited for. A voice switch's call set-up (``authorize``, a reservation) gets 5 s.

Only these reads: a write abandoned half-way could still complete after its client was
told it did not; streamed answers (``ledger.csv``) cannot be replaced once begun; and
statements and the event lookup (which reads the DLQ topic) may legitimately take longer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from api.http_json import Handler, unavailable_response
from rating.stores.db import finish_alone

log = logging.getLogger(__name__)

# Route name -> seconds the read may take.
READ_DEADLINES: dict[str, float] = {
    "authorize": 5.0, "reservation.read": 5.0,
    "account.read": 15.0, "ledger.read": 15.0, "usage.read": 15.0, "billing.state": 15.0,
}


def read_deadlines(deadlines: dict[str, float] | None = None
                   ) -> Callable[..., Awaitable[web.StreamResponse]]:
    limits = READ_DEADLINES if deadlines is None else deadlines

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        seconds = limits.get(route.name or "") if request.method == "GET" else None
        if seconds is None:
            return await handler(request)
        work = asyncio.ensure_future(handler(request))
        try:
            done, _ = await asyncio.wait({work}, timeout=seconds)
        except asyncio.CancelledError:  # the client went away
            work.cancel()
            raise
        if done:
            return work.result()
        work.cancel()  # not awaited: the cancellation itself may wait for the server
        finish_alone(work)
        log.warning("GET %s: no answer within %g s; answered 503 (is the database hanging?)",
                    request.path, seconds)
        return unavailable_response("store_unavailable")

    return middleware


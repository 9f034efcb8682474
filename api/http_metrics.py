"""Every API request counted, timed and logged once, with a request id.

The outermost middleware: it sees the status the client gets (errors included, as
``errors_as_json`` makes them), so a 5xx shows in ``rating_http_requests_total``.
Requests are labelled by route template (``/v1/accounts/{account_id}``), never by
path, so account ids cannot blow up the label sets; unrouted paths share one label.
The log line names the method, path, status and time, never the query string or a
header (they may carry a session token).

``X-Request-Id``: a caller's id (up to 128 visible ASCII characters) is kept, any
other is replaced by a new one; either way the response echoes it and the log line
carries it, so one request can be followed from client to log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web
from prometheus_client import Counter, Histogram

from api.http_json import Handler

log = logging.getLogger("api.requests")

REQUESTS = Counter(
    "rating_http_requests_total", "Account API requests, by route template, method and status.",
    ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "rating_http_request_duration_seconds",
    "Account API request duration (until the response is prepared), by route template.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_VALID_ID = re.compile(r"[!-~]{1,128}", re.ASCII)
_UNROUTED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(request: web.Request) -> str:
    """The route's template, or ``unmatched`` (404, 405 and anything not routed)."""
    info = request.match_info
    if info.http_exception is not None:
        return _UNROUTED
    resource = info.route.resource
    return resource.canonical if resource is not None else _UNROUTED


def request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def request_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id(request)
    request[REQUEST_ID_KEY] = rid
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = rid
        return response
    except web.HTTPException as exc:  # redirects and the like, raised past errors_as_json
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    except asyncio.CancelledError:  # the client went away before the answer
        status = 499
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = route_template(request)
        method = request.method if request.method in _METHODS else "OTHER"
        REQUESTS.labels(route, method, str(status)).inc()
        REQUEST_SECONDS.labels(route, method).observe(elapsed)
        log.log(logging.WARNING if status >= 500 else logging.INFO,
                "request_id=%s method=%s path=%s route=%s status=%d duration_ms=%.1f",
                rid, method, request.path, route, status, elapsed * 1000)

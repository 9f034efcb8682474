"""Who may call what (CONTRACT §8): credentials, their scopes, and the one check at the edge.

Every ``/v1/…`` route declares who may call it with ``@requires(...)``; the
``access_control`` middleware authenticates the bearer token and checks the route's
declaration before any handler runs. A ``/v1`` route without a declaration is refused
(fail closed). The object-level check is here too: a customer session reaches only
its own account's routes, and any other account answers ``404`` whether it exists or
not, so a session cannot enumerate accounts.

::

    credential                       role        may
    RATING_API_TOKEN                 operator    everything
    RATING_SWITCH_TOKEN              switch      routes declared SWITCH (authorize, reservations)
    customer session (issued token)  customer    routes declared CUSTOMER, for its account only
    the billing page's cookie        customer    routes declared PAGE (``/billing…``), its account

The billing page (CONTRACT §9) is opened with ``/billing?session=TOKEN``: this module
exchanges that token for an HttpOnly, SameSite=Strict cookie and redirects to
``/billing``, so the token leaves the address bar. Every ``/billing…`` route is then
authenticated by the cookie here, and each of its data routes also needs the page's
token (``X-CSRF-Token``; a cross-site form can neither send the cookie nor set a
header): it is derived from the session, so a page left open in another tab after a
second account's link replaced the cookie gets nothing of the second account.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiohttp import web

from api.http_json import Handler
from rating.core.errors import ApiError
from rating.stores.sessions import token_digest

Role = Literal["operator", "switch", "customer"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. ``name`` is what the audit trail records."""

    role: Role
    name: str
    account_id: str | None = None  # the one account of a customer session


PRINCIPAL_KEY = web.RequestKey("principal", Principal)


@dataclass(frozen=True, slots=True)
class Access:
    """Which roles may call a route; ``customer`` always means "its own account only".

    ``page`` routes (under ``/billing``) take the billing page's session cookie instead
    of a bearer token (``html``: the page itself, which shows its own "link expired"
    page); ``public`` ones (its style sheet and script) take nothing.
    """

    roles: frozenset[Role]
    page: bool = False
    html: bool = False
    public: bool = False


OPERATOR = Access(frozenset({"operator"}))
SWITCH = Access(frozenset({"operator", "switch"}))
CUSTOMER = Access(frozenset({"operator", "customer"}))
PAGE = Access(frozenset({"customer"}), page=True, html=True)
PAGE_DATA = Access(frozenset({"customer"}), page=True)
PUBLIC = Access(frozenset(), public=True)

PAGE_PREFIX = "/billing"
SESSION_COOKIE = "rating_billing_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Looks a customer session token up: its account id, or None (unknown or expired).
SessionLookup = Callable[[str], Awaitable[str | None]]
F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])
_ATTRIBUTE = "__rating_access__"


def requires(access: Access) -> Callable[[F], F]:
    """Declare who may call a handler."""

    def mark(handler: F) -> F:
        setattr(handler, _ATTRIBUTE, access)
        return handler

    return mark


def _same(given: str, expected: str | None) -> bool:
    if not expected:
        return False
    # Compared as digests so the comparison takes the same time whatever the lengths.
    return hmac.compare_digest(token_digest(given), token_digest(expected))


def bearer_token(request: web.Request) -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return None
    return given


class Authenticator:
    """Turns a bearer token into a ``Principal``, or None."""

    def __init__(self, *, operator_token: str | None, switch_token: str | None,
                 sessions: SessionLookup | None) -> None:
        self._operator = operator_token
        self._switch = switch_token
        self._sessions = sessions

    async def principal(self, token: str) -> Principal | None:
        if _same(token, self._operator):
            return Principal("operator", "operator")
        if _same(token, self._switch):
            return Principal("switch", "switch")
        return await self.session(token)

    async def session(self, token: str) -> Principal | None:
        """The customer a session token (bearer, URL or cookie) stands for, or None."""
        if self._sessions is not None and 0 < len(token) <= 256:
            account_id = await self._sessions(token)
            if account_id is not None:
                return Principal("customer", f"session:{account_id}", account_id)
        return None


def csrf_token(session_token: str) -> str:
    """The billing page's CSRF token for a session: only a holder of the session's
    token (the page, rendered for that cookie) can know it."""
    return hashlib.sha256(b"rating-billing-csrf\0" + token_digest(session_token)).hexdigest()


def page_session_token(request: web.Request) -> str | None:
    """The session token a billing-page request was authenticated with."""
    token = request.get(_PAGE_TOKEN_KEY)
    return token if isinstance(token, str) else None


_PAGE_TOKEN_KEY = web.RequestKey("page_session_token", str)


def principal_of(request: web.Request) -> Principal:
    """The caller that ``access_control`` authenticated for this request."""
    principal = request.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise RuntimeError("no principal: the route is not behind access_control")
    return principal


def access_control(authenticator: Authenticator, *, https_only: bool = False,
                   ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware: authenticate, then check the route's declared access.

    ``https_only``: customers reach the engine over https (through a proxy that
    terminates TLS), so the billing page's cookie is marked Secure however the
    request arrived here.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == PAGE_PREFIX or request.path.startswith(PAGE_PREFIX + "/"):
            return await _page_request(authenticator, request, handler, https_only)
        if not request.path.startswith("/v1/"):
            return await handler(request)
        route_handler = request.match_info.handler
        access = getattr(route_handler, _ATTRIBUTE, None)
        if not isinstance(access, Access):
            # Unrouted paths (404/405) and undeclared routes: never reached unauthenticated.
            if request.match_info.http_exception is not None:
                await _authenticate(authenticator, request)
                return await handler(request)
            raise ApiError(403, "forbidden", "this route admits no credential")
        principal = await _authenticate(authenticator, request)
        request[PRINCIPAL_KEY] = principal  # also for the audit of a refused write
        if principal.role == "customer":
            asked = request.match_info.get("account_id")
            if asked is not None and asked != principal.account_id:
                # The same answer whether or not the other account exists.
                raise ApiError(404, "not_found", "no such account")
        if principal.role not in access.roles or (
                principal.role == "customer" and "account_id" not in request.match_info):
            raise ApiError(403, "forbidden", f"a {principal.role} credential may not do this")
        return await handler(request)

    return middleware


async def _authenticate(authenticator: Authenticator, request: web.Request) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token")
    principal = await authenticator.principal(token)
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid or expired bearer token")
    return principal


# --- the billing page: the URL token exchanged for a cookie, then the cookie ------------

async def _page_request(authenticator: Authenticator, request: web.Request,
                        handler: Handler, https_only: bool) -> web.StreamResponse:
    access = getattr(request.match_info.handler, _ATTRIBUTE, None)
    if not isinstance(access, Access):
        if request.match_info.http_exception is not None:
            return await handler(request)  # 404 / 405: nothing behind them
        raise ApiError(403, "forbidden", "this route admits no credential")
    if access.public:
        return await handler(request)
    if not access.page:
        raise ApiError(403, "forbidden", "this route admits no credential")
    url_token = request.query.get("session") if access.html else None
    if url_token is not None:
        return await _exchange(authenticator, request, handler, url_token,
                               https_only or request.secure)
    token = request.cookies.get(SESSION_COOKIE, "")
    principal = await authenticator.session(token)
    if principal is None:
        if access.html:  # the page's handler answers with its "link expired" page
            return _withheld_cookie_reload(request, token) or await _expired(request, handler)
        raise ApiError(401, "session_expired", "this billing link has expired: ask for a new one")
    if not access.html and not hmac.compare_digest(
            _page_token(request).encode("utf-8", "surrogateescape"), csrf_token(token).encode()):
        # Also refuses a page left open after another account's link replaced the cookie.
        raise ApiError(403, "csrf_failed",
                       f"the page's {CSRF_HEADER} is required; reload the billing page")
    request[PRINCIPAL_KEY] = principal
    request[_PAGE_TOKEN_KEY] = token
    return await handler(request)


def _page_token(request: web.Request) -> str:
    """The page's token: in the header, or (a plain link such as the CSV download, which
    cannot set one) in the ``page_token`` query parameter of a read."""
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.method in _SAFE_METHODS:
        given = request.query.get("page_token")
    return given or ""


async def _exchange(authenticator: Authenticator, request: web.Request, handler: Handler,
                    url_token: str, secure: bool) -> web.StreamResponse:
    """``/billing?session=TOKEN``: the cookie, and the same page without the token.

    The cookie lasts as long as the browser session; the session's own expiry is
    checked on every request.
    """
    if await authenticator.session(url_token) is None:
        return await _expired(request, handler)
    response = web.Response(status=303, headers={
        "Location": request.path, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    response.set_cookie(SESSION_COOKIE, url_token, path=PAGE_PREFIX, httponly=True,
                        samesite="Strict", secure=secure)
    return response


async def _expired(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A cookie the browser holds is forgotten too: no other session's page shows."""
    response = await handler(request)
    if SESSION_COOKIE in request.cookies:
        response.del_cookie(SESSION_COOKIE, path=PAGE_PREFIX)
    return response


_RELOAD = (b'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0">'
           b"<title>Billing</title><p>Opening your billing page\xe2\x80\xa6</p>")


def _withheld_cookie_reload(request: web.Request, token: str) -> web.Response | None:
    """A link followed from another site (an e-mail) arrives without the SameSite=Strict
    cookie, which the browser withholds for the whole redirect chain. Reloading the
    page from itself is a same-site navigation, which carries it."""
    if (token or request.headers.get("Sec-Fetch-Site") != "cross-site"
            or request.headers.get("Sec-Fetch-Mode") != "navigate"):
        return None
    response = web.Response(body=_RELOAD, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response

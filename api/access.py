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
"""

from __future__ import annotations

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
    """Which roles may call a route; ``customer`` always means "its own account only"."""

    roles: frozenset[Role]


OPERATOR = Access(frozenset({"operator"}))
SWITCH = Access(frozenset({"operator", "switch"}))
CUSTOMER = Access(frozenset({"operator", "customer"}))

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
        if self._sessions is not None and len(token) <= 256:
            account_id = await self._sessions(token)
            if account_id is not None:
                return Principal("customer", f"session:{account_id}", account_id)
        return None


def principal_of(request: web.Request) -> Principal:
    """The caller that ``access_control`` authenticated for this request."""
    principal = request.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise RuntimeError("no principal: the route is not behind access_control")
    return principal


def access_control(authenticator: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware: authenticate, then check the route's declared access."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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

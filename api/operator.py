"""Operator routes: customer sessions issued (CONTRACT §8) and the audit trail read."""

from __future__ import annotations

from aiohttp import web

from api.access import OPERATOR, principal_of, requires
from api.http_json import int_field, int_query, json_body, json_response
from rating.settings import Settings
from rating.stores import audit
from rating.stores.accounts import AccountStore
from rating.stores.sessions import DEFAULT_TTL_SECONDS, IssuedSession, SessionStore


def iso(when: object) -> str:
    return str(when.isoformat()).replace("+00:00", "Z") if hasattr(when, "isoformat") else ""


def portal_url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}/billing?session={token}"


def session_json(issued: IssuedSession, base_url: str) -> dict[str, object]:
    return {"token": issued.token, "account_id": issued.account_id,
            "url": portal_url(base_url, issued.token), "expires_at": iso(issued.expires_at)}


class OperatorRoutes:
    def __init__(self, store: AccountStore, sessions: SessionStore, settings: Settings) -> None:
        self._store = store
        self._sessions = sessions
        self._settings = settings

    def add_to(self, app: web.Application) -> None:
        account = "/v1/accounts/{account_id}"
        app.router.add_post(f"{account}/sessions", self.issue_session, name="session.issue")
        app.router.add_get(f"{account}/audit", self.account_audit, allow_head=False,
                           name="audit.account")
        app.router.add_get("/v1/audit", self.audit, allow_head=False, name="audit.list")

    def _base_url(self, request: web.Request) -> str:
        if self._settings.public_url:
            return self._settings.public_url
        return f"{request.scheme}://{request.host}"

    @requires(OPERATOR)
    async def issue_session(self, request: web.Request) -> web.Response:
        body = await json_body(request, allow_empty=True)
        ttl = DEFAULT_TTL_SECONDS
        if "ttl_seconds" in body:
            ttl = int_field(body, "ttl_seconds")
        issued = await self._sessions.issue(request.match_info["account_id"], ttl_seconds=ttl,
                                            issued_by=principal_of(request).name)
        return json_response(session_json(issued, self._base_url(request)), 201)

    @requires(OPERATOR)
    async def audit(self, request: web.Request) -> web.Response:
        return await self._entries(request, None)

    @requires(OPERATOR)
    async def account_audit(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        await self._store.get(account_id)
        return await self._entries(request, account_id)

    async def _entries(self, request: web.Request, account_id: str | None) -> web.Response:
        limit = int_query(request, "limit", 100, 1, 1000) or 100
        before = int_query(request, "before", None, 1, 2**63 - 1)
        rows = await audit.entries(self._store.pool, account_id=account_id, limit=limit,
                                   before=before)
        return json_response({
            "entries": [{"id": e.id, "at": iso(e.at), "actor": e.actor, "action": e.action,
                         "account_id": e.account_id, "outcome": e.outcome, "detail": e.detail}
                        for e in rows],
            "next_before": rows[-1].id if len(rows) == limit else None})


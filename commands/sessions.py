"""``accounts portal-link`` (CONTRACT §8) and ``audit``: the operator's access commands."""

from __future__ import annotations

from typing import TextIO

import orjson

from api.operator import portal_url
from commands.accounts import store_for
from rating.core.errors import CommandError
from rating.settings import Settings
from rating.stores import audit
from rating.stores.sessions import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, SessionStore


def billing_base_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url
    return f"http://127.0.0.1:{settings.http_port}"


async def cmd_portal_link(settings: Settings, out: TextIO, account_id: str,
                          ttl: int | None) -> int:
    ttl_seconds = DEFAULT_TTL_SECONDS if ttl is None else ttl
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise CommandError(f"--ttl: must be 1..{MAX_TTL_SECONDS} seconds")
    async with store_for(settings) as store:
        issued = await SessionStore(store.pool).issue(account_id, ttl_seconds=ttl_seconds,
                                                      issued_by="cli")
    out.write(portal_url(billing_base_url(settings), issued.token) + "\n")
    return 0


async def cmd_audit(settings: Settings, out: TextIO, account_id: str | None,
                    limit: int) -> int:
    if not 1 <= limit <= 10_000:
        raise CommandError("--limit: must be 1..10000")
    async with store_for(settings) as store:
        rows = await audit.entries(store.pool, account_id=account_id, limit=limit)
    for e in reversed(rows):
        out.write(orjson.dumps({"id": e.id, "at": e.at.isoformat().replace("+00:00", "Z"),
                                "actor": e.actor, "action": e.action,
                                "account_id": e.account_id, "outcome": e.outcome,
                                "detail": e.detail}).decode() + "\n")
    return 0

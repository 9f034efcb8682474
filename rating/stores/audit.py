"""The audit trail: who (operator, switch, a customer session, the command line) did what
to which account, when, and how it ended. Append-only (a trigger refuses the rest)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from rating.stores.db import Connection

_MAX_DETAIL_CHARS = 4_000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    account_id: str | None
    outcome: str
    detail: dict[str, Any]


def storable(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    """``text`` as PostgreSQL can store it: no NUL, no lone surrogate, bounded."""
    clean = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return clean if len(clean) <= limit else clean[:limit] + "…"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value, 500)
    if isinstance(value, dict):
        return {storable(str(k), 100): _clean(v) for k, v in list(value.items())[:50]}
    if isinstance(value, list):
        return [_clean(v) for v in value[:50]]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return storable(str(value), 500)


async def record(conn: Connection | asyncpg.Pool, *, actor: str, action: str,
                 account_id: str | None, outcome: str,
                 detail: dict[str, Any] | None = None) -> None:
    payload = orjson.dumps(_clean(detail or {})).decode()
    if len(payload) > _MAX_DETAIL_CHARS:
        payload = orjson.dumps({"truncated": storable(payload)}).decode()
    await conn.execute(
        "INSERT INTO audit_log (actor, action, account_id, outcome, detail)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)",
        storable(actor, 200), storable(action, 100),
        None if account_id is None else storable(account_id, 200), storable(outcome, 200),
        payload)


async def entries(pool: asyncpg.Pool, *, account_id: str | None = None, limit: int = 100,
                  before: int | None = None) -> list[AuditEntry]:
    rows = await pool.fetch(
        "SELECT id, at, actor, action, account_id, outcome, detail::text AS detail"
        " FROM audit_log WHERE ($1::text IS NULL OR account_id = $1)"
        " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        account_id, before, limit)
    return [AuditEntry(r["id"], r["at"], r["actor"], r["action"], r["account_id"],
                       r["outcome"], orjson.loads(r["detail"])) for r in rows]

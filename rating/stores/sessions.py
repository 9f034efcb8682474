"""Customer sessions (CONTRACT §8): issued by the operator, one account each, expiring.

The token is 32 random bytes, URL-safe; only its SHA-256 digest is stored, so the
table cannot be used to open an account.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from rating.core.errors import InvalidRequest, UnknownAccount

DEFAULT_TTL_SECONDS = 900
MAX_TTL_SECONDS = 86_400  # a billing link lives a day at most


@dataclass(frozen=True, slots=True)
class IssuedSession:
    token: str
    account_id: str
    expires_at: datetime


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class SessionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def issue(self, account_id: str, *, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                    issued_by: str) -> IssuedSession:
        if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidRequest(f"ttl_seconds: must be 1..{MAX_TTL_SECONDS}",
                                 code="invalid_ttl")
        token = secrets.token_urlsafe(32)
        expires_at = await self._pool.fetchval(
            "INSERT INTO customer_sessions (token_digest, account_id, issued_by, expires_at)"
            " SELECT $1, id, $3, now() + make_interval(secs => $4) FROM accounts"
            " WHERE id = $2 RETURNING expires_at",
            token_digest(token), account_id, issued_by, float(ttl_seconds))
        if expires_at is None:
            raise UnknownAccount(f"account {account_id!r} does not exist")
        return IssuedSession(token, account_id, expires_at)

    async def account_of(self, token: str) -> str | None:
        """The account a live session token opens, or None (unknown or expired)."""
        account_id: str | None = await self._pool.fetchval(
            "SELECT account_id FROM customer_sessions"
            " WHERE token_digest = $1 AND expires_at > now()", token_digest(token))
        return account_id

    async def purge_expired(self, older_than_seconds: int = 86_400) -> int:
        status = await self._pool.execute(
            "DELETE FROM customer_sessions"
            " WHERE expires_at < now() - make_interval(secs => $1)", float(older_than_seconds))
        return int(status.rsplit(" ", 1)[-1])

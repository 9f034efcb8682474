"""PostgreSQL connection pool, and the one place database errors are classified.

Errors are matched by SQLSTATE class, never by message text: connection problems
(08), rollbacks such as serialization failures and deadlocks (40), exhausted
resources (53), operator intervention such as a shutdown (57) and system errors
(58) are transient; anything else is a bug or bad data and is not retried.
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import asyncpg
import asyncpg.pool

from rating.core.errors import StoreUnavailable

# A plain connection, or one borrowed from a pool: both run queries the same way.
Connection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"

_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
                            StoreUnavailable))


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    head, sep, tail = dsn.rpartition("@")
    if not sep:
        return dsn
    scheme, _, _credentials = head.partition("://")
    return f"{scheme}://…@{tail}"


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8,
                      timeout_s: float = 10.0) -> asyncpg.Pool:
    """A pool, or ``StoreUnavailable`` with one line saying which server and why."""
    try:
        pool: asyncpg.Pool = await asyncio.wait_for(
            asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                command_timeout=60), timeout_s)
    except Exception as exc:  # every failure mode of connecting is reported the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {reason}") from exc
    return pool


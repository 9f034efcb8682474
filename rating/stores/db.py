"""PostgreSQL connection pool, and the one place database errors are classified.

Errors are matched by SQLSTATE class, never by message text, into three kinds:

- ``outage`` (waited out, retried with back-off): connection problems (08),
  rollbacks such as serialization failures and deadlocks (40), exhausted resources
  (53), operator intervention such as a shutdown (57), system errors (58), and the
  client-side states of a connection the server dropped: a pooled connection told
  "terminating connection" during a restart fails its next query with asyncpg's
  ``InternalClientError`` or ``InterfaceError`` (and socket errors, timeouts);
- ``input`` (one row of the batch is to blame: isolate it, never retry it): data
  exceptions (22, e.g. a balance past ``bigint``), integrity violations (23, e.g.
  the balance bound) and program limits (54, e.g. an index row too large);
- ``other``: anything else (a missing table, a privilege, a bug). Not retried as
  an outage; the caller isolates it to the smallest batch and reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeAlias

import asyncpg
import asyncpg.pool

from rating.core.errors import StoreUnavailable

# A plain connection, or one borrowed from a pool: both run queries the same way.
Connection: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"

_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_INPUT_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
# Interface errors that say the client is misconfigured, not that the server went away.
_CONFIGURATION_ERRORS = (asyncpg.exceptions.ClientConfigurationError,
                         asyncpg.exceptions.UnsupportedClientFeatureError)
# The CHECK of migration 0006 that keeps every balance within money.BALANCE_BOUND.
BALANCE_BOUND_CONSTRAINT = "accounts_balance_within_bound"
_NUMERIC_VALUE_OUT_OF_RANGE = "22003"

ErrorKind = Literal["outage", "input", "other"]


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "")


def error_kind(exc: BaseException) -> ErrorKind:
    """What a failure of a database call means for the work that made it (see above)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = _sqlstate(exc)
        if sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return "outage"
        return "input" if sqlstate[:2] in _INPUT_SQLSTATE_CLASSES else "other"
    if isinstance(exc, _CONFIGURATION_ERRORS):
        return "other"
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
                        asyncpg.exceptions.InternalClientError, StoreUnavailable)):
        return "outage"
    return "other"


def is_transient(exc: BaseException) -> bool:
    """An outage: wait and retry the same work (it is not the work's fault)."""
    return error_kind(exc) == "outage"


def is_connection_lost(exc: BaseException) -> bool:
    """The connection itself is unusable (not only this statement): replace the pool's."""
    if isinstance(exc, asyncpg.PostgresError):
        return _sqlstate(exc)[:2] in ("08", "57")
    return error_kind(exc) == "outage" and not isinstance(exc, StoreUnavailable)


def exceeds_balance_bound(exc: BaseException) -> bool:
    """A write refused because a balance would leave the bound (or overflow ``bigint``)."""
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    if _sqlstate(exc) == _NUMERIC_VALUE_OUT_OF_RANGE:
        return True
    return getattr(exc, "constraint_name", None) == BALANCE_BOUND_CONSTRAINT


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """``pool.acquire()``, replacing every pooled connection once one is found dead.

    After a server restart each idle connection of the pool is broken, and each would
    fail one query in turn; expiring them all at the first failure costs one retry.
    """
    async with pool.acquire() as conn:
        try:
            yield conn
        except Exception as exc:
            if is_connection_lost(exc):
                await pool.expire_connections()
            raise


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
                                command_timeout=60, reset=_keep_session), timeout_s)
    except Exception as exc:  # every failure mode of connecting is reported the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {reason}") from exc
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Returning a connection to the pool costs no round trip.

    asyncpg rolls back a transaction left open in any case; its default reset also runs
    ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, a round trip
    per borrowing (a sixth of a reservation request's CPU, measured). Nothing here
    leaves session state behind: no SET, LISTEN or cursor outlives its transaction,
    and the only advisory locks are transaction-scoped (the relay's, migrations').
    """


class BoundedProbe:
    """A check answered within ``timeout_s``, for /readyz.

    It never waits past its deadline: a server that hangs (neither answering nor
    refusing) would otherwise hold the probe, and /readyz, until the request's own
    timeout, since cancelling it waits for the server too. The check is left to finish
    alone, and only one is in flight at a time: while it hangs, every probe answers
    "down" after ``timeout_s``.
    """

    def __init__(self, check: Callable[[], Awaitable[object]], timeout_s: float = 2.0) -> None:
        self._check = check
        self._timeout_s = timeout_s
        self._query: asyncio.Task[object] | None = None

    async def __call__(self) -> bool:
        if self._query is None or self._query.done():
            self._query = asyncio.ensure_future(self._check())
            finish_alone(self._query)
        done, _ = await asyncio.wait({self._query}, timeout=self._timeout_s)
        return bool(done) and not self._query.cancelled() and self._query.exception() is None

    async def close(self) -> None:
        if self._query is not None and not self._query.done():
            self._query.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._query, 1.0)


class DatabaseProbe(BoundedProbe):
    """``SELECT 1`` answered within ``timeout_s``."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float = 2.0) -> None:
        super().__init__(lambda: pool.fetchval("SELECT 1"), timeout_s)


def finish_alone(task: asyncio.Future[Any]) -> None:
    """Let ``task`` end without anyone awaiting it (work left to a server that hangs):
    its outcome is read when it ends, so a failure is not reported as never retrieved.
    Whoever gave up on it has already answered for it (a probe "down", a 503)."""
    task.add_done_callback(_read_outcome)


def _read_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()

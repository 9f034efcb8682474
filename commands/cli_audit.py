"""Audit rows for writes made on the command line (the API's come from api/audit_trail.py).

The dispatcher names the write before it runs (``expect_write``); the command's
database context records it with its outcome on the way out, while its pool is
still open. A refusal before the database is reached (a malformed argument) changed
nothing and leaves no row.
"""

from __future__ import annotations

import getpass
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from rating.core.errors import RatingError
from rating.stores import audit


@dataclass(frozen=True, slots=True)
class CliWrite:
    action: str
    account_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)


_PENDING: ContextVar[CliWrite | None] = ContextVar("cli_write", default=None)


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return "cli"


def expect_write(action: str, account_id: str | None, **detail: Any) -> None:
    _PENDING.set(CliWrite(action, account_id, detail))


async def record_outcome(pool: asyncpg.Pool, error: BaseException | None) -> None:
    write = _PENDING.get()
    if write is None:
        return
    _PENDING.set(None)
    if error is None:
        outcome = "ok"
    elif isinstance(error, RatingError):
        outcome = f"refused {error.code}"
    else:
        outcome = f"failed {type(error).__name__}"
    await audit.record(pool, actor=actor(), action=write.action, account_id=write.account_id,
                       outcome=outcome, detail=write.detail)

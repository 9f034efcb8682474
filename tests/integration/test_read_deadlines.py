"""A read the database holds answers 503 at its deadline, and the API is whole after."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from api.deadline import READ_DEADLINES
from tests.integration.test_http_api import Api, api, tariffs_dir  # noqa: F401  (fixtures)


@contextlib.asynccontextmanager
async def holding(pool: asyncpg.Pool, lock: str) -> AsyncIterator[None]:
    """A transaction that takes ``lock`` and holds it while the block runs."""
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(lock)
        try:
            yield
        finally:
            await tx.rollback()


async def test_a_held_read_answers_503_at_its_deadline_and_the_next_one_is_answered(
        api: Api, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(READ_DEADLINES, "account.read", 0.5)
    # Every read of accounts waits behind this lock, as behind a server that hangs.
    with caplog.at_level(logging.INFO, logger="api.requests"):
        async with holding(pool, "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE"):
            started = time.monotonic()
            status, body = await api.call("GET", "/v1/accounts/acct-1")
            waited = time.monotonic() - started
        assert (status, body["error"]["code"]) == (503, "store_unavailable")
        assert 0.5 <= waited < 5.0
        await asyncio.sleep(0.1)  # the abandoned read's cancellation reaches the server
        status, account = await api.call("GET", "/v1/accounts/acct-1")
        assert status == 200 and account["balance"] == "1.000000"
    # The request log says which went wrong at a level of its own.
    levels = [(r.levelno, "status=503" in r.getMessage()) for r in caplog.records
              if r.name == "api.requests"]
    assert levels == [(logging.WARNING, True), (logging.INFO, False)]


async def test_writes_are_never_cut_short(
        api: Api, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A top-up held past any read deadline still completes and answers."""
    monkeypatch.setitem(READ_DEADLINES, "account.read", 0.1)
    async with holding(pool, "SELECT 1 FROM accounts WHERE id = 'acct-1' FOR UPDATE"):
        topup = asyncio.create_task(api.call("POST", "/v1/accounts/acct-1/topups",
                                             {"amount": "2.00", "idempotency_key": "k-1"}))
        await asyncio.sleep(0.5)
        assert not topup.done()
    status, body = await topup
    assert status in (200, 201), body
    assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 'acct-1'") == 3_000_000

"""Migrations and the database's own guards of the money invariants."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.migrations import available_migrations, migrate


@pytest.fixture
async def empty_database(pg_server_dsn: str) -> AsyncIterator[str]:
    name = f"e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield f"{pg_server_dsn.rpartition('/')[0]}/{name}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_engines_migrating_at_once_apply_each_migration_exactly_once(
        empty_database: str) -> None:
    conns = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        versions = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY 1")
    finally:
        for conn in conns:
            await conn.close()
    applied = sorted(m.version for result in results for m in result)
    expected = [m.version for m in available_migrations()]
    assert applied == expected  # each applied by exactly one of the four
    assert [r["version"] for r in versions] == expected


async def test_the_ledger_is_append_only_and_accounts_are_never_deleted(
        pool: asyncpg.Pool) -> None:
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "standard", "EUR", 1_000_000))
    await store.credit("acct-1", kind="topup", source="topup", key="k", amount=500_000)
    with pytest.raises(asyncpg.RestrictViolationError):
        await pool.execute("UPDATE ledger SET amount = amount * 2")
    with pytest.raises(asyncpg.RestrictViolationError):
        await pool.execute("DELETE FROM ledger")
    with pytest.raises(asyncpg.RestrictViolationError):
        await pool.execute("DELETE FROM accounts WHERE id = 'acct-1'")
    assert await pool.fetchval("SELECT sum(amount) FROM ledger") == 500_000


async def test_a_pooled_connection_comes_back_clean_without_a_session_reset(
        empty_database: str) -> None:
    # The engine's pools skip asyncpg's per-borrowing reset query (a round trip each):
    # nothing may outlive its transaction, the migrations' lock included.
    from engine.services import migrate_database
    from rating.stores.db import create_pool

    pool = await create_pool(empty_database, min_size=1, max_size=1)
    try:
        await migrate_database(pool)
        async with pool.acquire() as conn:
            advisory = await conn.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            assert advisory == 0
            await conn.execute("BEGIN")  # a transaction left open by a failed caller
            await conn.execute("CREATE TABLE left_open (x int)")
        async with pool.acquire() as conn:  # the same, only, connection
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
    finally:
        await pool.close()

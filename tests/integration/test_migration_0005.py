"""Migration 0005 on a database an older engine wrote: its rows stay valid, its credits
keep answering replays, and an id outside the account-id rule can no longer move money."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from rating.core.errors import InvalidRequest
from rating.core.money import parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.stores.accounts import AccountStore
from rating.stores.migrations import available_migrations, migrate
from rating.stores.topups import TopupService


@pytest.fixture
async def older_database(pg_server_dsn: str) -> AsyncIterator[str]:
    """A database with the migrations before 0005 and rows as an older engine wrote them."""
    name = f"o_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = f"{pg_server_dsn.rpartition('/')[0]}/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                           " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for m in available_migrations():
            if m.version < 5:
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name)"
                                   " VALUES ($1, $2)", m.version, m.name)
        await conn.execute(
            """
            INSERT INTO accounts (id, plan_id, currency, opening_balance, balance)
            VALUES ('a', 'standard', 'EUR', 0, 1000000), ('a/b', 'standard', 'EUR', 0, 0);
            -- account a, key b/c, credited under the concatenated key a/b/c
            INSERT INTO ledger (account_id, kind, event_source, event_id, amount, currency)
            VALUES ('a', 'topup', 'topup', 'a/b/c', 1000000, 'EUR');
            INSERT INTO topup_payments (account_id, idempotency_key, amount, currency, status)
            VALUES ('a', 'b/c', 1000000, 'EUR', 'succeeded');
            """)
    finally:
        await conn.close()
    yield dsn
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_an_older_database_keeps_its_rows_and_its_credits_answer_replays(
        older_database: str, pool: asyncpg.Pool) -> None:
    conn = await asyncpg.connect(older_database)
    try:
        applied = await migrate(conn)
        assert 5 in [m.version for m in applied]
        validated = await conn.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'accounts_id_charset'")
    finally:
        await conn.close()
    assert validated is False  # an older id breaks the rule: kept, not validated
    # Every new database (the per-test one here) gets the constraint validated.
    assert await pool.fetchval(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'accounts_id_charset'") is True

    older = await asyncpg.create_pool(older_database, min_size=1, max_size=2)
    try:
        provider = SimulatedProvider()
        topups = TopupService(older, provider)
        replay = await topups.topup("a", parse_amount("1"), "b/c")
        assert (replay.replay, replay.credited) == (True, False)
        assert provider.charge_calls == 0
        with pytest.raises(InvalidRequest) as refused:
            await topups.topup("a/b", parse_amount("1"), "c")
        assert refused.value.code == "invalid_account"
        assert provider.charge_calls == 0
        # Whatever writes it, the older account's row can no longer change...
        with pytest.raises(asyncpg.CheckViolationError):
            await AccountStore(older).credit("a/b", kind="adjustment", source="adjustment",
                                             key="a%2Fb/x", amount=1, reason="r")
        # ...and its history stays as it was, readable.
        assert (await AccountStore(older).get("a/b")).balance == 0
        assert await older.fetchval("SELECT count(*) FROM ledger") == 1
    finally:
        await older.close()

"""The engine as a PostgreSQL role that may only read and write rows, set up by the files
in deploy/postgres/ exactly as an operator runs them; migrations as the schema's owner."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from commands.accounts import cmd_migrate
from consumers.outbox_relay import OutboxRelay
from engine.services import migrate_database
from rating.core.errors import SchemaOutdated
from rating.core.money import parse_amount
from rating.core.rate import Charge
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores import audit
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from rating.stores.migrations import available_migrations
from rating.stores.recharges import RechargePolicy, RechargeService
from rating.stores.sessions import SessionStore
from rating.stores.topups import TopupService
from tests.support import (
    REPO,
    create_topics,
    engine_env,
    ledger_explains_balances,
    wait_until,
)

DEPLOY = REPO / "deploy" / "postgres"


@dataclass
class Roles:
    owner_dsn: str
    engine_dsn: str
    database: str


def _dsn(server_dsn: str, user: str, database: str) -> str:
    scheme, _, rest = server_dsn.partition("://")
    hostpart = rest.rpartition("@")[2].partition("/")[0]
    return f"{scheme}://{user}@{hostpart}/{database}"


def _statements(path: Path, names: dict[str, str]) -> list[str]:
    """The file's statements and ``\\connect`` lines, with the roles and database renamed."""
    text = "\n".join(line.partition("--")[0] for line in path.read_text().splitlines())
    for old, new in names.items():
        text = re.sub(rf"\b{old}\b", new, text)
    statements: list[str] = []
    for chunk in re.split(r";\s*\n|\n(?=\\connect)", text):
        chunk = chunk.strip()
        if chunk.startswith("\\connect"):
            first, _, rest = chunk.partition("\n")
            statements.append(first)
            chunk = rest.strip()
        if chunk:
            statements.append(chunk.rstrip(";"))
    return statements


async def run_sql_file(path: Path, dsn_for: dict[str, str], first: str,
                       names: dict[str, str]) -> None:
    """Run ``path`` as psql would: one statement at a time, ``\\connect DB`` switching."""
    conn = await asyncpg.connect(dsn_for[first])
    try:
        for statement in _statements(path, names):
            if statement.startswith("\\connect"):
                await conn.close()
                conn = await asyncpg.connect(dsn_for[statement.split()[1]])
            else:
                await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def roles(pg_server_dsn: str) -> AsyncIterator[Roles]:
    uid = uuid.uuid4().hex[:8]
    names = {"rating_owner": f"owner_{uid}", "rating_engine": f"engine_{uid}",
             "rating": f"lp_{uid}"}
    superuser = pg_server_dsn.rpartition("//")[2].partition("@")[0] or "postgres"
    await run_sql_file(DEPLOY / "roles.sql",
                       {"postgres": pg_server_dsn,
                        names["rating"]: _dsn(pg_server_dsn, superuser, names["rating"])},
                       "postgres", names)
    yield Roles(_dsn(pg_server_dsn, names["rating_owner"], names["rating"]),
                _dsn(pg_server_dsn, names["rating_engine"], names["rating"]), names["rating"])
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{names["rating"]}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{names["rating_engine"]}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{names["rating_owner"]}"')
    finally:
        await admin.close()


async def migrate_and_grant(settings: Settings, roles: Roles) -> None:
    out = io.StringIO()
    await cmd_migrate(replace(settings, database_url=roles.engine_dsn,
                              migrate_database_url=roles.owner_dsn), out)
    assert out.getvalue().startswith("applied: 0001_initial")
    user = roles.owner_dsn.rpartition("//")[2].partition("@")[0]
    names = {"rating_owner": user,
             "rating_engine": roles.engine_dsn.rpartition("//")[2].partition("@")[0]}
    await run_sql_file(DEPLOY / "grants.sql", {"owner": roles.owner_dsn}, "owner", names)


async def test_the_engine_role_does_the_engines_work_and_nothing_else(
        settings: Settings, roles: Roles, kafka_bootstrap: str) -> None:
    await migrate_and_grant(settings, roles)
    pool = await asyncpg.create_pool(roles.engine_dsn, min_size=1, max_size=4)
    try:
        await migrate_database(pool)  # nothing pending: nothing to do, nothing refused
        store = AccountStore(pool)
        await store.create(NewAccount("acct-1", "standard", "EUR", parse_amount("10"),
                                      parse_amount("5")))
        await store.set_auto_recharge("acct-1", amount=parse_amount("20"),
                                      below=parse_amount("5"))
        provider = SimulatedProvider()
        fast = RechargePolicy(retry_delays_s=(0.1,), answer_timeout_s=0.5, settle_poll_s=0.1)
        await TopupService(pool, provider, fast).topup("acct-1", parse_amount("1"), "t1")
        charge = Charge("e1", "switch-1", "acct-1", "call", "GB", parse_amount("7"), "EUR",
                        "standard")
        async with pool.acquire() as conn:
            await apply_usage(conn, [RatedUsage(charge, datetime.now(UTC), False)])
        low = await pool.fetchval("SELECT event_id FROM outbox WHERE type = 'balance.low'")
        assert await RechargeService(pool, provider, fast).on_balance_low("acct-1", low) \
            == "succeeded"
        await store.credit("acct-1", kind="adjustment", source="adjustment", key="acct-1/a1",
                           amount=parse_amount("-1"), reason="support")
        issued = await SessionStore(pool).issue("acct-1", issued_by="operator")
        assert await SessionStore(pool).account_of(issued.token) == "acct-1"
        await audit.record(pool, actor="operator", action="topup", account_id="acct-1",
                           outcome="201", detail={})
        assert len(await audit.entries(pool, account_id="acct-1")) == 1
        await create_topics(settings, kafka_bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:  # published, then purged at once (a retention of 0): DELETE of sent rows
            relay = OutboxRelay(pool, producer, settings.balance_topic, retention_s=0.0)
            relaying = asyncio.create_task(relay.run())

            async def purged() -> bool:
                return await pool.fetchval("SELECT count(*) FROM outbox") == 0

            await wait_until(purged, what="the outbox published and purged")
            relay.request_stop()
            await relaying
        finally:
            await producer.stop()
        assert (await store.get("acct-1")).balance == parse_amount("23")
        assert await ledger_explains_balances(pool) == []

        for forbidden in ("UPDATE ledger SET amount = 0", "DELETE FROM ledger",
                          "TRUNCATE ledger", "TRUNCATE outbox", "DELETE FROM accounts",
                          "DELETE FROM topup_payments", "DELETE FROM recharges",
                          "UPDATE audit_log SET outcome = 'x'", "DELETE FROM audit_log",
                          "CREATE TABLE mine (x int)", "DROP TABLE outbox",
                          "ALTER TABLE accounts DROP CONSTRAINT accounts_id_charset",
                          "INSERT INTO schema_migrations (version, name) VALUES (999, 'x')",
                          "DELETE FROM schema_migrations"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute(forbidden)
    finally:
        await pool.close()
    owner = await asyncpg.connect(roles.owner_dsn)
    try:  # the owner may do DDL, but the ledger refuses TRUNCATE to it too
        with pytest.raises(asyncpg.RestrictViolationError, match="TRUNCATE"):
            await owner.execute("TRUNCATE ledger")
        assert await owner.fetchval("SELECT count(*) FROM ledger") == 4
    finally:
        await owner.close()


async def test_run_with_a_migration_its_role_may_not_apply_stops_in_one_line(
        settings: Settings, roles: Roles) -> None:
    await migrate_and_grant(settings, roles)
    [latest] = [m for m in available_migrations() if m.version == 5]
    owner = await asyncpg.connect(roles.owner_dsn)
    try:  # as if the engine were upgraded before `rating-engine migrate` ran: 0005 undone
        await owner.execute(
            "ALTER TABLE accounts DROP CONSTRAINT accounts_id_charset;"
            " DROP TRIGGER ledger_never_truncated ON ledger;"
            " DELETE FROM schema_migrations WHERE version = 5")
    finally:
        await owner.close()
    pool = await asyncpg.create_pool(roles.engine_dsn, min_size=1, max_size=2)
    try:
        with pytest.raises(SchemaOutdated) as caught:
            await migrate_database(pool)
    finally:
        await pool.close()
    message = caught.value.message
    assert "rating-engine migrate" in message and f"{latest.version:04d}" in message
    env = engine_env(replace(settings, database_url=roles.engine_dsn))
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "commands.main", "run"], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "run `rating-engine migrate`" in errors[0], result.stderr
    # `migrate` as the owner (its own DSN) brings the schema up to date; then `run` may start.
    out = io.StringIO()
    await cmd_migrate(replace(settings, database_url=roles.engine_dsn,
                              migrate_database_url=roles.owner_dsn), out)
    assert out.getvalue() == f"applied: {latest.version:04d}_{latest.name}\n"

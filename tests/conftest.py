"""Session-wide real services for the tests that need them.

PostgreSQL and the Kafka-compatible broker are real processes: embedded ones
started once per session, or those named by ``RATING_TEST_DATABASE_URL`` /
``RATING_TEST_KAFKA_BOOTSTRAP``. Each test gets its own database (a copy of a
migrated template) and its own topic names.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from engine.embedded import EmbeddedBroker, EmbeddedPostgres
from rating.settings import Settings
from rating.stores.migrations import migrate

REPO = Path(__file__).resolve().parent.parent
_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # A folder of this run's own: pytest's shared numbered folders keep only the three
    # newest, so runs side by side on one machine could delete each other's servers.
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="rating-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)

TEMPLATE_DB = "rating_test_template"

# Test servers trade durability for speed; nothing here survives a power cut anyway.
_FAST_PG = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "200"}


def _with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
async def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """DSN of a server where tests may create databases; its template is migrated."""
    external = os.environ.get("RATING_TEST_DATABASE_URL")
    if external:
        dsn = external
        server = None
    else:
        server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), server_options=_FAST_PG)
        await server.start()
        dsn = server.dsn
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_with_database(dsn, TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield dsn
    if server is not None:
        await server.close()


@pytest.fixture
async def database_url(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    yield _with_database(pg_server_dsn, name)
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    external = os.environ.get("RATING_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker"))
    await broker.start()
    yield broker.bootstrap
    await broker.close()


@pytest.fixture
def settings(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own database, topics and consumer groups."""
    uid = uuid.uuid4().hex[:10]
    return Settings(
        database_url=database_url,
        kafka_bootstrap=tuple(kafka_bootstrap.split(",")),
        data_dir=tmp_path / "data",
        tariffs_dir=REPO / "tests" / "fixtures" / "tariffs",
        metrics_port=0,
        http_port=0,
        usage_topic=f"usage.events.{uid}",
        dlq_topic=f"usage.events.dlq.{uid}",
        balance_topic=f"balance.events.{uid}",
        consumer_group=f"rating-{uid}",
        recharge_group=f"recharge-{uid}",
    )

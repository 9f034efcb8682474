"""A database outage is transient: the consumer retries, skips nothing, and resumes by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import REGISTRY

from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.db import BoundedProbe
from tests.support import (
    TcpProxy,
    create_topics,
    ledger_explains_balances,
    publish_with_librdkafka,
    running_consumer,
    usage_event,
    wait_until,
)


@pytest.fixture
async def proxied_pool(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, TcpProxy]]:
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    pool = await asyncpg.create_pool(urlunsplit(parts._replace(netloc=netloc)),
                                     min_size=1, max_size=4)
    yield pool, proxy
    await proxy.cut()
    pool.terminate()


def _postgres_retries() -> float:
    return REGISTRY.get_sample_value("rating_transient_errors_total",
                                     {"dependency": "postgresql"}) or 0.0


async def test_database_outage_is_retried_and_nothing_is_skipped(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str,
        proxied_pool: tuple[asyncpg.Pool, TcpProxy]) -> None:
    engine_pool, proxy = proxied_pool
    settings = replace(settings, batch_max_events=50)
    await create_topics(settings, kafka_bootstrap)
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("50")))

    def calls(prefix: str, n: int) -> list[tuple[str, bytes]]:
        return [("acct-1", usage_event("usage.call", f"{prefix}{i}", "acct-1", {
            "call_id": f"c{i}", "destination": "+442071234567", "from_s": 0, "to_s": 60}))
            for i in range(n)]

    async def applied() -> int:
        value: int = await pool.fetchval("SELECT count(*) FROM ledger")
        return value

    async with running_consumer(settings, engine_pool) as consumer:
        publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, calls("a", 100))
        await wait_until(lambda: _at_least(applied, 100), what="first 100 applied")
        # What /readyz asks of the broker: a metadata request, answered.
        broker = BoundedProbe(consumer.broker_answers, timeout_s=5)
        assert await broker() is True
        await broker.close()
        retries_before = _postgres_retries()
        await proxy.cut()  # the database disappears
        publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, calls("b", 300))
        await wait_until(lambda: _true(_postgres_retries() > retries_before + 1),
                         what="retries during the outage")
        assert await applied() == 100  # nothing could be written, nothing was skipped
        await proxy.start()  # back, on the same port
        await wait_until(lambda: _at_least(applied, 400), what="all 400 applied after recovery")
        await asyncio.sleep(1)
    assert await applied() == 400
    balance = await pool.fetchval("SELECT balance FROM accounts WHERE id = 'acct-1'")
    assert balance == parse_amount("50") - 400 * parse_amount("0.012")
    assert await ledger_explains_balances(pool) == []


async def _at_least(count: object, n: int) -> bool:
    return bool(await count() >= n)  # type: ignore[operator]


async def _true(value: bool) -> bool:
    return value


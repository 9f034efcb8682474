"""Consumer-group rebalances: two members briefly holding the same events never double-debit."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.usage_consumer import UsageConsumer
from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.tariffbook.book import TariffStore
from tests.support import (
    create_topics,
    ledger_explains_balances,
    publish_with_librdkafka,
    running_consumer,
    usage_event,
    wait_until,
)

ACCOUNTS = [f"acct-{i}" for i in range(8)]
LANDLINE_GB = "+442071234567"  # standard plan: 0.012 per started minute


def events(prefix: str, n: int) -> list[tuple[str, bytes]]:
    return [(ACCOUNTS[i % len(ACCOUNTS)], usage_event(
        "usage.call", f"{prefix}-{i}", ACCOUNTS[i % len(ACCOUNTS)],
        {"call_id": f"c-{i}", "destination": LANDLINE_GB, "from_s": 0, "to_s": 60}))
        for i in range(n)]


async def setup(settings: Settings, pool: asyncpg.Pool, bootstrap: str) -> Settings:
    configured = replace(settings, batch_max_events=100)
    await create_topics(configured, bootstrap, usage_partitions=4)
    await AccountStore(pool).create_many(
        NewAccount(a, "standard", "EUR", parse_amount("100")) for a in ACCOUNTS)
    return configured


async def assert_each_applied_once(pool: asyncpg.Pool, n: int) -> None:
    assert await pool.fetchval("SELECT count(*) FROM ledger") == n
    debited = await pool.fetchval("SELECT sum(opening_balance - balance) FROM accounts")
    assert debited == n * parse_amount("0.012")
    assert await ledger_explains_balances(pool) == []


async def test_a_revoked_members_written_but_uncommitted_batch_is_not_debited_twice(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    settings = await setup(settings, pool, kafka_bootstrap)
    publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, events("r", 400))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    first = UsageConsumer(settings, kafka_bootstrap, pool, TariffStore(settings.tariffs_dir),
                          producer)
    await first.start()
    try:
        records = []
        while len(records) < 150:
            records += (await first._poll()).records
        # The debit commits, then the member loses its partitions before its offset
        # commit: exactly the window a rebalance opens.
        _prepared, debit, _rejected = await first._prepare(records)
        await first._write(debit)
    finally:
        await first.close()
        await producer.stop()
    written = await pool.fetchval("SELECT count(*) FROM ledger")
    assert written >= 150
    async with running_consumer(settings, pool):  # the new owner re-reads from the start
        await wait_until(lambda: _ledger_at_least(pool, 400), what="all 400 applied")
        await asyncio.sleep(1)
    await assert_each_applied_once(pool, 400)


async def _ledger_at_least(pool: asyncpg.Pool, n: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM ledger") >= n)


async def test_a_member_joining_mid_stream_causes_no_double_debit(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    settings = await setup(settings, pool, kafka_bootstrap)
    stream = events("j", 3000)
    async with running_consumer(settings, pool):
        publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, stream[:1500])
        await wait_until(lambda: _ledger_at_least(pool, 100), what="first debits")
        async with running_consumer(settings, pool):  # joins: the group rebalances
            publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, stream[1500:])
            await wait_until(lambda: _ledger_at_least(pool, 3000), timeout_s=120,
                             what="all 3000 applied")
            await asyncio.sleep(1)
    await assert_each_applied_once(pool, 3000)

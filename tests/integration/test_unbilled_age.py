"""A batch read but not billed shows its age, whatever holds it: the gauge an SRE pages
on when the database hangs (neither answering nor refusing: no error is counted)."""

from __future__ import annotations

from dataclasses import replace

import asyncpg
from prometheus_client import REGISTRY

from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from tests.support import (
    create_topics,
    publish_with_librdkafka,
    running_consumer,
    usage_event,
    wait_until,
)


def unbilled_age() -> float:
    value = REGISTRY.get_sample_value("rating_unbilled_batch_age_seconds")
    assert value is not None
    return value


# What holds the batch, one after the other on one consumer:
HOLDS = [
    # The account's row locked by another transaction: the debit waits on it, as on a
    # server that hangs.
    "SELECT 1 FROM accounts WHERE id = 'acct-1' FOR UPDATE",
    # The whole table locked: the account lookup, before rating, waits already.
    "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE",
]


async def test_a_batch_held_by_the_database_shows_its_age_until_it_is_billed(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    env = replace(settings, batch_max_events=100)
    await create_topics(env, kafka_bootstrap, usage_partitions=1)
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("5")))
    async with running_consumer(env, pool):
        for n, hold in enumerate(HOLDS, start=1):
            assert unbilled_age() == 0.0
            async with pool.acquire() as holder, holder.transaction():
                await holder.execute(hold)
                publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
                    ("acct-1", usage_event("usage.call", f"e{n}", "acct-1", {
                        "call_id": f"c{n}", "destination": "+442071234567", "from_s": 0,
                        "to_s": 60}))])

                async def waiting_a_while() -> bool:
                    return unbilled_age() >= 2.0

                await wait_until(waiting_a_while, timeout_s=30, what=f"its age to grow ({hold})")
                assert await pool.fetchval("SELECT count(*) FROM ledger") == n - 1

            async def billed(n: int = n) -> bool:
                return await pool.fetchval("SELECT count(*) FROM ledger") == n

            await wait_until(billed, what="the batch billed once the lock is gone")

            async def acknowledged() -> bool:
                return unbilled_age() == 0.0

            await wait_until(acknowledged, what="the gauge back to 0")

"""Nothing stalls on input, against real PostgreSQL and broker: a poison debit, records the
DLQ cannot take as they are, pricing guards, and connections dropped under the consumer."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from consumers.usage_consumer import UsageConsumer
from rating.core.events import decode_usage_event
from rating.core.money import BALANCE_BOUND, parse_amount
from rating.core.rate import rate
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.tariffbook.book import TariffStore
from tests.support import (
    create_topics,
    ledger_explains_balances,
    publish_with_librdkafka,
    read_topic,
    running_consumer,
    usage_event,
    wait_until,
)

LANDLINE = "+442071234567"  # standard: 0.012 per started minute


def call(event_id: str, account: str, **extra: Any) -> bytes:
    return usage_event("usage.call", event_id, account,
                       {"call_id": f"c-{event_id}", "destination": LANDLINE,
                        "from_s": 0, "to_s": 60}, **extra)


@pytest.fixture
async def env(settings: Settings, kafka_bootstrap: str) -> Settings:
    configured = replace(settings, batch_max_events=500)
    await create_topics(configured, kafka_bootstrap, usage_partitions=1)
    return configured


async def ledger_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger"))


async def at_least(pool: asyncpg.Pool, n: int) -> bool:
    return await ledger_count(pool) >= n


def headers(message: Any) -> dict[str, bytes]:
    return dict(message.headers)


async def test_an_overflowing_event_is_dead_lettered_and_the_rest_of_its_batch_billed(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    store = AccountStore(pool)
    await store.create_many(NewAccount(a, "standard", "EUR", parse_amount("10"))
                            for a in ("acct-1", "acct-2", "acct-3"))
    # Room for one more 0.012 call before the bound, not two.
    edge = -BALANCE_BOUND + parse_amount("0.020")
    await pool.execute("UPDATE accounts SET opening_balance = $1, balance = $1"
                       " WHERE id = 'acct-2'", edge)
    events = [(a, call(f"{a}-{i}", a)) for i in range(5) for a in ("acct-1", "acct-2", "acct-3")]
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, events)  # one batch
    async with running_consumer(env, pool) as consumer:
        await wait_until(lambda: at_least(pool, 11), what="11 events billed")
        dlq = await read_topic(kafka_bootstrap, env.dlq_topic, 4)
        await wait_until(lambda: _true(consumer.batches_committed > 0), what="a commit")
    assert await ledger_count(pool) == 11  # 5 + 5, and acct-2's first call
    assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 'acct-2'") == (
        edge - parse_amount("0.012"))
    assert len(dlq) == 4
    for message in dlq:
        found = headers(message)
        assert found["error_code"] == b"balance_out_of_range"
        assert b"acct-2" in found["error"] and message.key == b"acct-2"
        assert decode_usage_event(message.value).account_id == "acct-2"
    assert await ledger_explains_balances(pool) == []


async def test_a_tombstone_and_a_2_mb_record_go_to_the_dlq_and_the_partition_moves_on(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("5")))
    # 2 MB, and its error quotes the 2 MB field.
    big = usage_event("usage.call", "big", "acct-1", {
        "call_id": "c", "destination": "+" + "9" * 2_000_000, "from_s": 0, "to_s": 60})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 5_000_000,
                         "enable.idempotence": False})
    producer.produce(env.usage_topic, value=call("before", "acct-1"), key=b"acct-1")
    producer.produce(env.usage_topic, value=None, key=None)  # a tombstone
    producer.produce(env.usage_topic, value=None, key=b"acct-1")  # one with a key
    producer.produce(env.usage_topic, value=big, key=b"acct-1")
    producer.produce(env.usage_topic, value=call("after", "acct-1"), key=b"acct-1")
    assert producer.flush(30) == 0
    async with running_consumer(env, pool):
        await wait_until(lambda: at_least(pool, 2), what="the events around them billed")
        dlq = await read_topic(kafka_bootstrap, env.dlq_topic, 3)
    assert len(dlq) == 3
    tombstone, keyed, truncated = sorted(dlq, key=lambda m: int(headers(m)["source_offset"]))
    assert tombstone.key is None and tombstone.value == b""
    assert headers(tombstone)["value_null"] == b"true"
    assert (keyed.key, keyed.value) == (b"acct-1", None)  # the original, unchanged
    assert headers(keyed)["value_null"] == b"true"
    assert headers(tombstone)["error_code"] == b"invalid_event"
    found = headers(truncated)
    assert found["error_code"] == b"invalid_event"
    assert found["error"].startswith(b"data.destination: not an E.164 number")
    assert found["original_size"] == str(len(big)).encode()
    assert found["original_sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert truncated.value == big[:len(truncated.value)] and len(truncated.value) < len(big)
    assert len(found["error"]) <= 1024
    # Cut in the topic, kept whole in the overflow store: no refused byte is lost.
    kept = await pool.fetch("SELECT source_offset, value, publish_error FROM dead_letters")
    assert [(r["source_offset"], r["value"]) for r in kept] == [
        (int(found["source_offset"]), big)]
    assert kept[0]["publish_error"] == (
        f"published to the DLQ topic cut: value of {len(big)} bytes")


class RefusingProducer:
    """The engine's producer, except that the DLQ refuses every record for its size."""

    def __init__(self, real: AIOKafkaProducer, dlq_topic: str) -> None:
        self._real = real
        self._dlq = dlq_topic

    async def send(self, topic: str, **kwargs: Any) -> Any:
        if topic == self._dlq:
            raise MessageSizeTooLargeError("the topic takes smaller records")
        return await self._real.send(topic, **kwargs)


@pytest.fixture
async def refusing_consumer(env: Settings, pool: asyncpg.Pool,
                            kafka_bootstrap: str) -> AsyncIterator[UsageConsumer]:
    real = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await real.start()
    consumer = UsageConsumer(env, kafka_bootstrap, pool, TariffStore(env.tariffs_dir),
                             RefusingProducer(real, env.dlq_topic))  # type: ignore[arg-type]
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    yield consumer
    consumer.request_stop()
    await task
    await consumer.close()
    await real.stop()


async def test_a_record_the_dlq_keeps_refusing_is_kept_in_the_database_and_not_retried(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str,
        refusing_consumer: UsageConsumer) -> None:
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("5")))
    stored_before = REGISTRY.get_sample_value("rating_dead_letters_stored_total") or 0.0
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("acct-1", b"not json"), ("acct-1", call("ok", "acct-1"))])
    await wait_until(lambda: at_least(pool, 1), what="the valid event billed")
    await wait_until(lambda: _true(refusing_consumer.batches_committed > 0),
                     what="its offsets committed")
    rows = await pool.fetch("SELECT * FROM dead_letters")
    assert len(rows) == 1
    assert rows[0]["value"] == b"not json" and rows[0]["key"] == b"acct-1"
    assert rows[0]["error_code"] == "invalid_json"
    assert "MessageSizeTooLargeError" in rows[0]["publish_error"]
    assert (REGISTRY.get_sample_value("rating_dead_letters_stored_total") or 0.0) == (
        stored_before + 1)


async def test_a_charge_in_another_currency_than_the_accounts_is_refused(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    store = AccountStore(pool)
    await store.create(NewAccount("acct-eur", "standard", "EUR", parse_amount("5")))
    await store.create(NewAccount("acct-usd", "standard", "USD", parse_amount("5")))
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("acct-usd", call("u1", "acct-usd")), ("acct-eur", call("e1", "acct-eur"))])
    async with running_consumer(env, pool):
        await wait_until(lambda: at_least(pool, 1), what="the EUR event billed")
        dlq = await read_topic(kafka_bootstrap, env.dlq_topic, 1)
    assert [headers(m)["error_code"] for m in dlq] == [b"currency_mismatch"]
    assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 'acct-usd'") == (
        parse_amount("5"))


async def test_an_event_without_time_is_priced_and_recorded_at_its_record_time(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("5")))
    stamped = datetime(2027, 2, 1, 12, 0, tzinfo=UTC)  # the 2027 version is in force
    raw = usage_event("usage.call", "t1", "acct-1", {"call_id": "c", "destination": LANDLINE,
                                                     "from_s": 0, "to_s": 90}, time_=None)
    started = usage_event("usage.call", "t2", "acct-1", {
        "call_id": "c2", "destination": LANDLINE, "from_s": 0, "to_s": 90,
        "started_at": "2026-12-31T23:59:30Z"}, time_="2027-01-01T00:01:00Z")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": False})
    producer.produce(env.usage_topic, value=raw, key=b"acct-1",
                     timestamp=int(stamped.timestamp() * 1000))
    producer.produce(env.usage_topic, value=started, key=b"acct-1")
    assert producer.flush(30) == 0
    async with running_consumer(env, pool):
        await wait_until(lambda: at_least(pool, 2), what="both billed")
    rows = {r["event_id"]: r for r in await pool.fetch("SELECT * FROM ledger")}
    book = TariffStore(env.tariffs_dir).book
    event = decode_usage_event(raw)
    assert rows["t1"]["event_time"] == stamped
    assert -rows["t1"]["amount"] == rate(event, book, "standard", stamped).amount
    assert -rows["t1"]["amount"] != rate(event, book, "standard",
                                         datetime(2026, 6, 1, tzinfo=UTC)).amount
    # A call that started under the 2026 prices is priced by them, whole.
    old_price = rate(event, book, "standard", datetime(2026, 12, 31, tzinfo=UTC)).amount
    assert -rows["t2"]["amount"] == old_price
    assert rows["t2"]["event_time"] == datetime(2027, 1, 1, 0, 1, tzinfo=UTC)


async def test_connections_dropped_under_the_consumer_are_waited_out(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("50")))
    failures_before = REGISTRY.get_sample_value(
        "rating_component_failures_total", {"component": "usage-consumer"}) or 0.0
    retries_before = REGISTRY.get_sample_value(
        "rating_transient_errors_total", {"dependency": "postgresql"}) or 0.0
    env = replace(env, batch_max_events=20)
    engine_pool = await asyncpg.create_pool(
        env.database_url, min_size=4, max_size=4,
        server_settings={"application_name": "engine-under-test"})
    stop = asyncio.Event()

    async def drop_connections() -> None:
        """What a server restart does to every pooled connection, again and again."""
        while not stop.is_set():
            await pool.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE application_name = 'engine-under-test'")
            await asyncio.sleep(0.05)

    def failures() -> float:
        return REGISTRY.get_sample_value("rating_component_failures_total",
                                         {"component": "usage-consumer"}) or 0.0

    try:
        async with running_consumer(env, engine_pool) as consumer:
            dropping = asyncio.create_task(drop_connections())
            for round_ in range(10):
                publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
                    ("acct-1", call(f"r{round_}-{i}", "acct-1")) for i in range(100)])
                await asyncio.sleep(0.3)
            await wait_until(lambda: _true(
                (REGISTRY.get_sample_value("rating_transient_errors_total",
                                           {"dependency": "postgresql"}) or 0.0)
                > retries_before), what="a query failing on a dropped connection")
            stop.set()
            await dropping
            await wait_until(lambda: at_least(pool, 1000), what="all 1000 billed")
            assert failures() == failures_before  # outages are waited out, not failures
            await _a_client_that_stops_fetching_is_replaced(consumer, env, pool,
                                                            kafka_bootstrap)
    finally:
        stop.set()
        await engine_pool.close()
    assert await ledger_count(pool) == 1001
    assert await pool.fetchval("SELECT balance FROM accounts") == (
        parse_amount("50") - 1001 * parse_amount("0.012"))
    assert failures() == failures_before + 1


async def _a_client_that_stops_fetching_is_replaced(
        consumer: UsageConsumer, env: Settings, pool: asyncpg.Pool,
        kafka_bootstrap: str) -> None:
    """aiokafka's background fetch task can end on an unexpected error (an encoding
    failure, say); its getmany() then returns nothing forever and says nothing."""
    import struct

    client = consumer._consumer
    fetcher = client._fetcher

    def broken(assignment: object) -> None:
        raise struct.error("'i' format requires -2147483648 <= number <= 2147483647")

    fetcher._get_actions_per_node = broken
    await wait_until(lambda: _true(fetcher.error_future.done()), what="the fetcher's end")
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic,
                            [("acct-1", call("after-the-fetcher", "acct-1"))])
    await wait_until(lambda: at_least(pool, 1001), what="the event after the fetcher's end")
    assert consumer._consumer is not client


async def _true(value: bool) -> bool:
    return value


"""The pipeline benchmark's reference figures: what the engine is measured against.

(a1) raw batched debit, (a2) raw Kafka fetch, (c) one transaction per event, and
(d0) the latency floor of the broker and client alone (a bare aiokafka consumer).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from datetime import datetime

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from pipeline_common import (
    DEBIT_BATCH,
    SOURCE_LATENCY,
    SOURCE_WARMUP,
    create_topics,
    engine_fetch_settings,
    percentile,
    publish_all,
    publish_paced,
    traffic,
)

from rating.stores.ledger import RatedUsage, apply_usage
from rating.tariffbook.book import TariffStore


async def measure_raw_fetch(bootstrap: str, topic: str, expected: int) -> float:
    """Messages/s of an aiokafka consumer with the engine's fetch settings, no group."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", **engine_fetch_settings())
    await consumer.start()
    try:
        count = 0
        started = time.perf_counter()
        deadline = time.monotonic() + 120
        while count < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw fetch: only {count} of {expected} messages in 120 s")
            batch = await consumer.getmany(timeout_ms=200, max_records=DEBIT_BATCH)
            count += sum(len(records) for records in batch.values())
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def measure_raw_debit(pool: asyncpg.Pool, batch: list[RatedUsage]) -> float:
    async with pool.acquire() as conn:
        started = time.perf_counter()
        for i in range(0, len(batch), DEBIT_BATCH):
            result = await apply_usage(conn, batch[i:i + DEBIT_BATCH])
            if result.applied != len(batch[i:i + DEBIT_BATCH]):
                raise RuntimeError(f"raw debit applied {result.applied} of a batch")
        return len(batch) / (time.perf_counter() - started)


_NAIVE_INSERT = """
INSERT INTO ledger (event_source, event_id, account_id, kind, amount, accrued, service,
                    country, plan_id, currency, event_time)
VALUES ($1, $2, $3, 'usage', $4, 0, $5, $6, $7, $8, $9)
ON CONFLICT (event_source, event_id) DO NOTHING
RETURNING amount
"""
_NAIVE_UPDATE = """
UPDATE accounts SET balance = balance + $2, version = version + 1, updated_at = now()
WHERE id = $1
"""


async def measure_naive(pool: asyncpg.Pool, batch: list[RatedUsage]) -> float:
    """One durable transaction per event, sequential: the design the batching replaces."""
    async with pool.acquire() as conn:
        started = time.perf_counter()
        for usage in batch:
            c = usage.charge
            async with conn.transaction():
                amount = await conn.fetchval(
                    _NAIVE_INSERT, c.source, c.event_id, c.account_id, -c.amount, c.service,
                    c.country, c.plan_id, c.currency, usage.event_time)
                if amount is not None:
                    await conn.execute(_NAIVE_UPDATE, c.account_id, amount)
        return len(batch) / (time.perf_counter() - started)



async def measure_fetch_latency(args: argparse.Namespace, accounts: list[str],
                                tariffs: TariffStore, bootstrap: str) -> dict[str, float]:
    """(d0) The same offered load read by a bare aiokafka consumer (engine fetch settings,
    a group, an offset commit per batch, no database): the latency floor that the
    broker and client alone impose."""
    topics = await create_topics(bootstrap, "bench.fetch-latency")
    consumer = AIOKafkaConsumer(
        topics["topic"], bootstrap_servers=bootstrap, group_id="bench-fetch-latency",
        enable_auto_commit=False, auto_offset_reset="earliest", **engine_fetch_settings())
    await consumer.start()
    latencies: list[float] = []
    acknowledged: list[float] = []  # send -> the broker's acknowledgement, per event
    try:
        warmup = list(itertools.islice(traffic(accounts, tariffs, SOURCE_WARMUP, seed=6), 200))
        await asyncio.to_thread(publish_all, bootstrap, topics["topic"], warmup)
        seen = 0
        while seen < len(warmup):
            batch = await consumer.getmany(timeout_ms=200, max_records=DEBIT_BATCH)
            seen += sum(len(records) for records in batch.values())
        await consumer.commit()
        # As long as (d): the embedded broker slows as it fills, so a shorter run
        # would understate the floor that (d) stands on.
        seconds = args.seconds
        producing = asyncio.create_task(asyncio.to_thread(
            publish_paced, bootstrap, topics["topic"],
            traffic(accounts, tariffs, SOURCE_LATENCY, seed=7), args.rate, seconds,
            None, acknowledged))
        sent: int | None = None
        deadline = time.monotonic() + seconds + 60
        while (sent is None or len(latencies) < sent) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=DEBIT_BATCH)
            records = [r for part in batch.values() for r in part]
            if records:
                await consumer.commit()
                now = time.time()
                for record in records:
                    event = orjson.loads(record.value or b"{}")
                    latencies.append(now - datetime.fromisoformat(event["time"]).timestamp())
            if sent is None and producing.done():
                sent, _ = producing.result()
        if sent is None or len(latencies) != sent:
            raise RuntimeError(f"fetch latency: {len(latencies)} of {sent} events read")
    finally:
        await consumer.stop()
    latencies.sort()
    acknowledged.sort()
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "n": len(latencies), "ack_p50": percentile(acknowledged, 0.5),
            "ack_p99": percentile(acknowledged, 0.99)}


"""Reading the dead-letter topic from the start (or a time) to its end, without a group.

The end is where every partition's position has reached its end offset AND a poll
has then found nothing for ``idle_s``: the embedded broker's high watermark can
undercount a topic written in batches, so it alone is not trusted as the end.

A record published cut (its value or key too large for the topic) is read back whole
from the overflow store when a database pool is given: listed, explained and replayed
with its original bytes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from rating.core.dlq import DlqRecord
from rating.core.errors import BrokerUnavailable
from rating.stores.dead_letters import kept_whole

log = logging.getLogger(__name__)

# A partition that has not reached its end offset but returns nothing for this long
# (records deleted by retention, transaction markers) is taken as read to its end.
_STUCK_S = 5.0


async def scan_dlq(bootstrap: str, topic: str, *, since: datetime | None = None,
                   idle_s: float = 0.5,
                   pool: asyncpg.Pool | None = None) -> AsyncIterator[DlqRecord]:
    """Every record of ``topic`` (written at or after ``since``), in partition order;
    with ``pool``, a record published cut comes whole from the overflow store.

    A topic that does not exist yields nothing. ``BrokerUnavailable`` if Kafka cannot
    be reached.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                request_timeout_ms=15_000)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        async for record in _scan(consumer, topic, since, idle_s):
            yield await _whole(pool, record) if pool is not None and _cut(record) else record
    except KafkaError as exc:
        raise BrokerUnavailable(f"reading {topic} failed: {exc}") from exc
    finally:
        await consumer.stop()


def _cut(record: DlqRecord) -> bool:
    return "true" in (record.headers.get("value_truncated"), record.headers.get("key_truncated"))


async def _whole(pool: asyncpg.Pool, record: DlqRecord) -> DlqRecord:
    """``record`` with the original key and value the overflow store kept, if it did."""
    headers = record.headers
    try:
        where = (headers["source_topic"], int(headers["source_partition"]),
                 int(headers["source_offset"]))
    except (KeyError, ValueError):
        return record
    async with pool.acquire() as conn:
        kept = await kept_whole(conn, *where)
    if kept is None:
        return record
    return record.with_bytes(*kept)


async def _scan(consumer: AIOKafkaConsumer, topic: str, since: datetime | None,
                idle_s: float) -> AsyncIterator[DlqRecord]:
    if topic not in await consumer.topics():
        return
    partitions = sorted(consumer.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return
    consumer.assign(tps)
    since_ms = None if since is None else int(since.timestamp() * 1000)
    await _seek(consumer, tps, since_ms)
    ends = await consumer.end_offsets(tps)
    last_record = time.monotonic()
    while True:
        batch = await consumer.getmany(timeout_ms=int(idle_s * 1000) or 1, max_records=1000)
        got = False
        for tp in tps:
            for r in batch.get(tp, ()):
                got = True
                if since_ms is not None and r.timestamp is not None and r.timestamp < since_ms:
                    continue
                yield DlqRecord.of(r.partition, r.offset, r.timestamp, r.key, r.value,
                                   r.headers or ())
        now = time.monotonic()
        if got:
            last_record = now
            continue
        reached = True
        for tp in tps:
            if await consumer.position(tp) < ends[tp]:
                reached = False
                break
        if reached or now - last_record >= _STUCK_S:
            return


async def _seek(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                since_ms: int | None) -> None:
    if since_ms is None:
        await consumer.seek_to_beginning(*tps)
        return
    try:
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
    except (KafkaError, ValueError) as exc:  # a broker without timestamp lookups
        log.info("offsets by time unavailable (%s): reading from the beginning", exc)
        await consumer.seek_to_beginning(*tps)
        return
    for tp in tps:
        hit = found.get(tp)
        if hit is None:
            with contextlib.suppress(KafkaError):
                await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, hit.offset)


async def find_in_dlq(bootstrap: str, topic: str, source: str, event_id: str,
                      pool: asyncpg.Pool | None = None) -> DlqRecord | None:
    """The last DLQ record of the event ``(source, event_id)``, or None."""
    found = None
    async for record in scan_dlq(bootstrap, topic, pool=pool):
        if record.event_id == event_id and record.source == source:
            found = record
    return found

"""Polling a batch of records and committing past it: shared by every consumer here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumers import metrics
from consumers.retry import Backoff
from rating.core.errors import describe

log = logging.getLogger(__name__)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class FetcherStopped(Exception):
    """The client's background fetch task has ended: nothing more will be fetched."""


def _check_fetcher(consumer: AIOKafkaConsumer) -> None:
    # aiokafka fetches in a background task and getmany() only reads what it stored: if
    # that task ends on an unexpected error, getmany() returns nothing, forever, and
    # nothing else says so (aiokafka keeps its end in ``error_future`` and never looks).
    task = getattr(getattr(consumer, "_fetcher", None), "error_future", None)
    if task is None or not task.done():
        return
    error = None if task.cancelled() else task.exception()
    cause = error.__cause__ or error if error is not None else None
    raise FetcherStopped("the Kafka client stopped fetching" + (
        f" ({describe(cause)})" if cause is not None else "")) from error


async def _leave_and_stop(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, leaving the group whatever its generation.

    aiokafka sends LeaveGroup on stop only past generation 0 (Kafka's first generation
    is 1); the embedded broker's first is 0, and a member that does not leave holds its
    partitions until its session expires: the client that replaces it waits that long.
    Private to ``replace_client``, under its deadline: a LeaveGroup waits for the
    broker's answer (up to the request timeout), which an engine's shutdown must not.
    """
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if getattr(coordinator, "generation", None) == 0 and getattr(coordinator, "member_id", ""):
        coordinator.generation = 1  # the LeaveGroup request itself carries no generation
    await consumer.stop()


async def replace_client(old: AIOKafkaConsumer,
                         new: Callable[[], AIOKafkaConsumer]) -> AIOKafkaConsumer:
    """A started client in place of ``old``, which stopped fetching (``FetcherStopped``).

    ``old`` leaves the group first; the new one joins and reads on from the group's
    committed offsets, so what was read and not committed is read again (whatever
    handles it makes that harmless). Raises when the new one cannot start (a broker
    outage): ``old`` is closed by then, and the caller tries again later.
    """
    try:  # leaves the group, then fails on the ended fetch task
        await asyncio.wait_for(_leave_and_stop(old), 10)
    except Exception:
        with contextlib.suppress(Exception):  # the connections stop() did not reach
            await old._client.close()
    client = new()
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await client.stop()
        raise
    return client


async def poll_partitions(consumer: AIOKafkaConsumer,
                          max_records: int) -> dict[TopicPartition, list[Record]]:
    """Up to ``max_records`` by partition, in offset order; a broker failure is counted
    and yields nothing. ``FetcherStopped`` when the client will never fetch again."""
    try:
        fetched: dict[TopicPartition, list[Record]] = await consumer.getmany(
            timeout_ms=200, max_records=max_records)
    except KafkaError as exc:
        metrics.TRANSIENT_ERRORS.labels("kafka").inc()
        log.warning("fetch failed (%s); retrying", describe(exc))
        await Backoff(0.5, 0.5).wait()  # between half a second and a second
        return {}
    if not fetched:
        _check_fetcher(consumer)
    return fetched


async def poll_records(consumer: AIOKafkaConsumer, max_records: int) -> list[Record]:
    """Up to ``max_records`` across partitions; a broker failure is counted and yields []."""
    fetched = await poll_partitions(consumer, max_records)
    return [r for partition in fetched.values() for r in partition]


async def commit_past(consumer: AIOKafkaConsumer, records: Sequence[Record]) -> bool:
    """Commit each partition's offset past ``records``; False when the group refused it.

    A refusal means the partitions moved to another member, which re-reads these
    records; whatever handled them must make that harmless (keys, idempotency).
    """
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return await commit_offsets(consumer, offsets)


async def commit_offsets(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
    """Commit ``offsets`` (the next offset to read, per partition); see ``commit_past``."""
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError, KafkaError) as exc:
        metrics.OFFSET_COMMIT_FAILURES.inc()
        log.warning("offset commit refused (%s); records will be redelivered", exc)
        return False
    return True

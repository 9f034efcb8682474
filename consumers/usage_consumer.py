"""The usage consumer: Kafka batch -> decode -> rate -> one debit transaction -> offsets.

Order per polled batch, which is what makes the effect exactly-once:
  1. decode and rate every event in memory (bad ones are set aside for the DLQ);
  2. write all rated events in ONE PostgreSQL transaction (duplicates do nothing);
  3. publish the set-aside events to the DLQ and wait for the broker's ack;
  4. only then commit the Kafka offsets.
A crash anywhere before 4 redelivers the batch; step 2 then changes nothing.

Batches overlap, but each step sees them in order: batch N+1 is decoded and rated
while N is being written, and written while N's offsets are being committed. No
offset is committed before the write of every batch up to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumers import metrics
from consumers.kafka_batches import Record, commit_past, poll_records
from consumers.retry import StoppedWhileRetrying, retry_transient
from rating.core.errors import PermanentError, UnknownAccount
from rating.core.events import CallUsage, TollFreeUsage, UsageEvent, decode_usage_event
from rating.core.rate import rate
from rating.core.tariff import TariffBook
from rating.settings import Settings
from rating.stores.ledger import (
    AccountInfo,
    BatchResult,
    DebitBatch,
    RatedUsage,
    apply_usage,
    debit_rows,
    lookup_accounts,
)
from rating.stores.settlement import Settlement, settles
from rating.tariffbook.book import TariffStore

log = logging.getLogger(__name__)

_SLICE = 100  # events decoded or rated between two yields to the event loop


@dataclass(frozen=True, slots=True)
class Rejected:
    record: Record
    code: str
    reason: str


@dataclass(slots=True)
class PreparedBatch:
    rated: list[RatedUsage]
    rejected: list[Rejected]
    repeated: int = 0  # the same (source, id) more than once in this batch
    # Calls of accounts with open credit reservations: they settle against them.
    settle: list[Settlement] = field(default_factory=list)


def decode_all(records: Sequence[Record]) -> tuple[list[tuple[Record, UsageEvent]],
                                                   list[Rejected]]:
    decoded: list[tuple[Record, UsageEvent]] = []
    rejected: list[Rejected] = []
    types: Counter[str] = Counter()
    for record in records:
        try:
            event = decode_usage_event(record.value or b"")
        except PermanentError as exc:
            rejected.append(Rejected(record, exc.code, exc.message))
            types["invalid"] += 1
            continue
        types[f"usage.{event.service}"] += 1
        decoded.append((record, event))
    for type_, n in types.items():
        metrics.EVENTS_CONSUMED.labels(type_).inc(n)
    return decoded, rejected


def rate_into(batch: PreparedBatch, seen: set[tuple[str, str]],
              decoded: Sequence[tuple[Record, UsageEvent]], accounts: dict[str, AccountInfo],
              book: TariffBook, received: datetime) -> None:
    """Pure rating of (part of) a batch into ``batch``; ``seen`` spans the whole batch."""
    for record, event in decoded:
        key = (event.source, event.event_id)
        if key in seen:  # the ledger would ignore it too; skip the work
            batch.repeated += 1
            continue
        seen.add(key)
        account = accounts.get(event.account_id)
        try:
            if account is None:
                raise UnknownAccount(f"unknown account {event.account_id!r}")
            charge = rate(event, book, account.plan_id)
        except PermanentError as exc:
            batch.rejected.append(Rejected(record, exc.code, exc.message))
            continue
        if (account.reserving and isinstance(event, CallUsage | TollFreeUsage)
                and settles(event.call_id)):
            batch.settle.append(Settlement(event.source, event.event_id, event.account_id,
                                           event.call_id, charge.amount, event.final))
        on_invoice = event.service == "stt" and account.stt_billing == "invoice"
        batch.rated.append(RatedUsage(charge, event.time or received, on_invoice))


def fetch_settings(settings: Settings) -> dict[str, int]:
    """How the usage consumer fetches: a whole batch per poll, large fetches."""
    return {"max_poll_records": settings.batch_max_events,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "fetch_max_bytes": 64 * 1024 * 1024, "max_partition_fetch_bytes": 16 * 1024 * 1024}


class UsageConsumer:
    """Consumes ``usage.events`` in batches; one instance per consumer-group member."""

    def __init__(self, settings: Settings, bootstrap: str, pool: asyncpg.Pool,
                 tariffs: TariffStore, producer: AIOKafkaProducer) -> None:
        self._settings = settings
        self._pool = pool
        self._tariffs = tariffs
        self._producer = producer
        self._consumer = AIOKafkaConsumer(
            settings.usage_topic, bootstrap_servers=bootstrap, group_id=settings.consumer_group,
            enable_auto_commit=False, auto_offset_reset="earliest", **fetch_settings(settings))
        self.stopping = asyncio.Event()
        self._started = False
        self._closed = False
        self.batches_committed = 0
        self._lag_updated = 0.0
        self._lag_labels: set[tuple[str, str]] = set()

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("usage consumer is closed")
        await self._consumer.start()
        self._started = True

    def request_stop(self) -> None:
        """Stop fetching; the batch in flight is finished and committed."""
        self.stopping.set()

    async def run(self) -> None:
        """Poll, prepare, write and acknowledge batches until asked to stop."""
        try:
            await self._run_batches()
        except StoppedWhileRetrying as exc:
            log.warning("stopping with batch uncommitted (%s); it will be redelivered", exc)

    async def _run_batches(self) -> None:
        """Three steps at once, each on a different batch and each in batch order.

        Batch N+2 is decoded and rated (CPU) while N+1 is written (the database) and
        N's DLQ events and offsets go to the broker. A write starts only once the
        previous write has committed, and an acknowledgement only once the previous
        one is done: the exactly-once argument above holds batch by batch.
        """
        writing: asyncio.Task[BatchResult] | None = None
        acknowledging: asyncio.Task[None] | None = None
        try:
            while not self.stopping.is_set():
                records = await self._poll()
                await self._update_lag()
                staged = await self._prepare(records) if records else None
                if writing is not None:
                    await writing  # one write at a time; a failed one surfaces here
                    writing = None
                if acknowledging is not None and acknowledging.done():
                    acknowledging.result()  # so does a failed acknowledgement
                if staged is None:
                    continue
                prepared, debit, rejected = staged
                writing = asyncio.create_task(self._write(debit))
                acknowledging = asyncio.create_task(
                    self._acknowledge(records, prepared, rejected, writing, acknowledging))
                # Let the write send its first statement before the next poll, whose
                # record parsing would otherwise keep the database waiting.
                await asyncio.sleep(0)
        except BaseException:
            # Retries in flight give up rather than wait for a recovery; what was
            # written is still acknowledged, and the first failure is the one raised.
            self.stopping.set()
            if acknowledging is not None:
                with contextlib.suppress(Exception):
                    await acknowledging
            raise
        if acknowledging is not None:
            await acknowledging  # waits for every earlier acknowledgement too

    async def _poll(self) -> list[Record]:
        return await poll_records(self._consumer, self._settings.batch_max_events)

    async def _prepare(self, records: list[Record]
                       ) -> tuple[PreparedBatch, DebitBatch, list[Rejected]]:
        """Decode, look up the accounts and rate: no write, safe to run ahead.

        The debit statement's parameter (``DebitBatch``, the rated events) is encoded
        here too, so that the write has nothing left to compute.
        """
        metrics.BATCH_EVENTS.observe(len(records))
        received = datetime.now(UTC)
        # Decoding and rating a full batch is ~20 ms of CPU: done in slices with a
        # yield between them, so that the previous batches' write and offset commit
        # are answered promptly instead of queueing behind it (a quarter more
        # throughput, measured with make bench).
        decoded: list[tuple[Record, UsageEvent]] = []
        rejected: list[Rejected] = []
        for start in range(0, len(records), _SLICE):
            more_decoded, more_rejected = decode_all(records[start:start + _SLICE])
            decoded += more_decoded
            rejected += more_rejected
            await asyncio.sleep(0)

        async def lookup() -> dict[str, AccountInfo]:
            async with self._pool.acquire() as conn:
                return await lookup_accounts(conn, list({e.account_id for _, e in decoded}))

        accounts = await retry_transient(lookup, what="account lookup", stopping=self.stopping)
        book = self._tariffs.book  # one tariff snapshot for the whole batch
        prepared = PreparedBatch([], [])
        seen: set[tuple[str, str]] = set()
        rows: list[dict[str, object]] = []
        for start in range(0, len(decoded), _SLICE):
            rated_before = len(prepared.rated)
            rate_into(prepared, seen, decoded[start:start + _SLICE], accounts, book, received)
            rows += debit_rows(prepared.rated[rated_before:])
            await asyncio.sleep(0)
        return prepared, DebitBatch.of(prepared.rated, rows, prepared.settle), rejected

    async def _write(self, debit: DebitBatch) -> BatchResult:
        """The batch's debit transaction, retried until it commits (or we stop)."""
        async def write() -> BatchResult:
            async with self._pool.acquire() as conn:
                started = time.perf_counter()
                result = await apply_usage(conn, debit)
                metrics.DEBIT_SECONDS.observe(time.perf_counter() - started)
            return result

        result = await retry_transient(write, what="debit transaction", stopping=self.stopping)
        committed_at = time.time()
        metrics.EVENT_TO_COMMIT_SECONDS.observe_many(
            max(0.0, committed_at - usage.event_time.timestamp()) for usage in debit.usage)
        return result

    async def _acknowledge(self, records: list[Record], prepared: PreparedBatch,
                           rejected: list[Rejected], written: asyncio.Task[BatchResult],
                           previous: asyncio.Task[None] | None) -> None:
        """DLQ and offsets of a batch, once the previous one is acknowledged and this one
        written (a failure of either is raised here, before any offset is committed)."""
        if previous is not None:
            await previous
        result = await written
        rejected = rejected + prepared.rejected
        if rejected:
            await retry_transient(lambda: self._send_to_dlq(rejected), what="DLQ publish",
                                  stopping=self.stopping)
        await self._commit(records)
        self._count(result, rejected)
        if prepared.repeated:
            metrics.EVENTS_DUPLICATE.inc(prepared.repeated)

    async def _send_to_dlq(self, rejected: list[Rejected]) -> None:
        futures = []
        for item in rejected:
            record = item.record
            headers = [
                ("error", item.reason.encode()), ("error_code", item.code.encode()),
                ("source_topic", record.topic.encode()),
                ("source_partition", str(record.partition).encode()),
                ("source_offset", str(record.offset).encode()),
            ]
            futures.append(await self._producer.send(
                self._settings.dlq_topic, value=record.value, key=record.key, headers=headers,
                partition=None))
        await asyncio.gather(*futures)

    async def _commit(self, records: list[Record]) -> None:
        # A refused commit is harmless: the ledger's unique key absorbs the redelivery.
        if await commit_past(self._consumer, records):
            self.batches_committed += 1
            metrics.LAST_COMMIT_TIMESTAMP.set_to_current_time()

    async def _update_lag(self) -> None:
        """Lag of every partition this member owns, refreshed even when idle or stuck.

        Taken from the consumer itself (highwater minus position), which works on
        every Kafka-compatible broker; partitions that moved away stop reporting.
        """
        now = time.monotonic()
        if now - self._lag_updated < 1.0:
            return
        self._lag_updated = now
        owned: set[tuple[str, str]] = set()
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(self._consumer.position(tp), 0.5)
            except (KafkaError, TimeoutError):
                continue
            labels = (tp.topic, str(tp.partition))
            owned.add(labels)
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, highwater - position))
        for labels in self._lag_labels - owned:
            with contextlib.suppress(KeyError):  # another member in this process did it
                metrics.CONSUMER_LAG.remove(*labels)
        self._lag_labels = owned

    @staticmethod
    def _count(result: BatchResult, rejected: list[Rejected]) -> None:
        for code, n in Counter(item.code for item in rejected).items():
            metrics.EVENTS_DLQ.labels(code).inc(n)
        if result.duplicates:
            metrics.EVENTS_DUPLICATE.inc(result.duplicates)
        for total in result.totals:
            metrics.EVENTS_APPLIED.labels(total.service).inc(total.events)
            metrics.AMOUNT_DEBITED.labels(
                total.service, total.currency, "invoice" if total.kind == "invoice" else "credit",
            ).inc(total.amount / 1_000_000)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            await self._consumer.stop()

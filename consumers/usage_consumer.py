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

Nothing stalls on input: an event that cannot be decoded, rated or debited goes to
the DLQ with its reason (a debit the database refuses is narrowed down to the events
to blame: consumers/debit_isolation.py), and the DLQ always takes it
(consumers/dead_letters.py). Outages are waited out. Any other failure restarts the
pipeline from the first uncommitted offset of each partition, after a growing delay:
the consumer never gives up on its own, only when asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from consumers import metrics
from consumers.dead_letters import DeadLetterPublisher, Rejected
from consumers.debit_isolation import IsolatedDebit, debit_isolating
from consumers.kafka_batches import (
    FetcherStopped,
    Record,
    commit_offsets,
    poll_partitions,
    replace_client,
)
from consumers.retry import (
    Backoff,
    StoppedWhileRetrying,
    retry_transient,
    sleep_unless,
)
from consumers.usage_batches import (
    PreparedBatch,
    count_consumed,
    decode_all,
    fetch_settings,
    rate_into,
)
from rating.core.errors import describe
from rating.core.events import UsageEvent
from rating.settings import Settings
from rating.stores.db import connection
from rating.stores.ledger import (
    AccountInfo,
    BatchResult,
    DebitBatch,
    apply_usage,
    debit_rows,
    lookup_accounts,
)
from rating.tariffbook.book import TariffStore

__all__ = ["UsageConsumer", "fetch_settings"]

log = logging.getLogger(__name__)

# The consumers of this process, for the unbilled-batch gauge (read when scraped).
_LIVE: weakref.WeakSet[UsageConsumer] = weakref.WeakSet()
metrics.UNBILLED_BATCH_AGE.set_function(
    lambda: max((c.unbilled_age() for c in _LIVE), default=0.0))

_SLICE = 100  # events decoded or rated between two yields to the event loop


@dataclass(slots=True)
class Polled:
    """One poll: its records, and per partition the first offset and the one past the last."""

    records: list[Record]
    ranges: dict[TopicPartition, tuple[int, int]]


class UsageConsumer:
    """Consumes ``usage.events`` in batches; one instance per consumer-group member."""

    def __init__(self, settings: Settings, bootstrap: str, pool: asyncpg.Pool,
                 tariffs: TariffStore, producer: AIOKafkaProducer) -> None:
        self._settings = settings
        self._pool = pool
        self._tariffs = tariffs
        self._dead_letters = DeadLetterPublisher(producer, settings.dlq_topic, pool)
        self._bootstrap = bootstrap
        self._consumer = self._new_client()
        self.stopping = asyncio.Event()
        # Set when asked to stop, or when the pipeline fails: retries in flight give up.
        self._halt = asyncio.Event()
        # Per partition, the first offset this member has read but not committed.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._starting = False
        self._started = False
        self._closed = False
        self._client_stopped = False  # the Kafka client stopped fetching: a new one is due
        self.batches_committed = 0
        # When each batch read and not yet acknowledged was read, oldest first (the
        # pipeline holds up to three); and, after a failure rewound them, when the
        # oldest of those was read: they are read again, still unbilled.
        self._unbilled: deque[float] = deque()
        self._unbilled_since: float | None = None
        _LIVE.add(self)
        self._lag_updated = 0.0
        self._lag_labels: set[tuple[str, str]] = set()

    def _new_client(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            self._settings.usage_topic, bootstrap_servers=self._bootstrap,
            group_id=self._settings.consumer_group, enable_auto_commit=False,
            auto_offset_reset="earliest", **fetch_settings(self._settings))

    async def _renew_client(self) -> None:
        """A new Kafka client in place of one that stopped fetching."""
        self._consumer = await replace_client(self._consumer, self._new_client)
        self._uncommitted.clear()  # the new member reads from the committed offsets
        self._client_stopped = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("usage consumer is closed")
        self._starting = True  # a start cancelled half-way still needs its stop()
        await self._consumer.start()
        self._started = True

    async def broker_answers(self) -> None:
        """Ask the brokers for the cluster's metadata; raises when none answers (for
        /readyz: the consumer alone does not notice a broker that hangs)."""
        await self._consumer.topics()

    def request_stop(self) -> None:
        """Stop fetching; the batch in flight is finished and committed."""
        self.stopping.set()
        self._halt.set()

    async def run(self) -> None:
        """Poll, prepare, write and acknowledge batches until asked to stop."""
        backoff = Backoff(1.0, 60.0)
        while not self.stopping.is_set():
            committed = self.batches_committed
            self._halt = asyncio.Event()
            try:
                if self._client_stopped:
                    await self._renew_client()
                await self._run_batches()
                return
            except StoppedWhileRetrying as exc:
                if self.stopping.is_set():
                    log.warning("stopping with batch uncommitted (%s); it will be redelivered",
                                exc)
                    return
                failure: Exception = exc
            except Exception as exc:
                failure = exc
            if self.batches_committed > committed:
                backoff.reset()
            metrics.COMPONENT_FAILURES.labels("usage-consumer").inc()
            delay = backoff.next_delay()
            if isinstance(failure, FetcherStopped):
                log.error("usage consumer: %s; a new client joins the group in %.1f s",
                          failure, delay, exc_info=failure)
                self._client_stopped = True
                self._rewind()  # what was read and not billed stays unbilled, and aging
                await sleep_unless(self.stopping, delay)
                continue
            log.error("usage consumer failed (%s); resuming from the first uncommitted "
                      "offsets in %.1f s", describe(failure), delay, exc_info=failure)
            self._rewind()
            await sleep_unless(self.stopping, delay)

    def unbilled_age(self) -> float:
        """Seconds since the oldest batch read and not yet acknowledged was read."""
        # A time kept from a rewind is older than any batch read since.
        oldest = self._unbilled_since
        if oldest is None and self._unbilled:
            oldest = self._unbilled[0]
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _rewind(self) -> None:
        """Read again from the first offset not committed, on the partitions still ours."""
        if self._unbilled_since is None and self._unbilled:
            self._unbilled_since = self._unbilled[0]  # older than anything read since
        self._unbilled.clear()
        assigned = self._consumer.assignment()
        for tp, offset in self._uncommitted.items():
            if tp in assigned:
                with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                    self._consumer.seek(tp, offset)

    async def _run_batches(self) -> None:
        """Three steps at once, each on a different batch and each in batch order.

        Batch N+2 is decoded and rated (CPU) while N+1 is written (the database) and
        N's DLQ events and offsets go to the broker. A write starts only once the
        previous write has committed, and an acknowledgement only once the previous
        one is done: the exactly-once argument above holds batch by batch.
        """
        writing: asyncio.Task[IsolatedDebit] | None = None
        acknowledging: asyncio.Task[None] | None = None
        try:
            while not self.stopping.is_set():
                polled = await self._poll()
                if polled.records:  # unbilled from now on, however long preparing it takes
                    self._unbilled.append(time.monotonic())
                await self._update_lag()
                staged = await self._prepare(polled.records) if polled.records else None
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
                    self._acknowledge(polled, prepared, rejected, writing, acknowledging))
                # Let the write send its first statement before the next poll, whose
                # record parsing would otherwise keep the database waiting.
                await asyncio.sleep(0)
        except BaseException:
            # Retries in flight give up rather than wait for a recovery; what was
            # written is still acknowledged, and the first failure is the one raised.
            self._halt.set()
            if acknowledging is not None:
                with contextlib.suppress(Exception):
                    await acknowledging
            raise
        if acknowledging is not None:
            await acknowledging  # waits for every earlier acknowledgement too

    async def _poll(self) -> Polled:
        fetched = await poll_partitions(self._consumer, self._settings.batch_max_events)
        records: list[Record] = []
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for tp, part in fetched.items():
            if part:
                records += part
                ranges[tp] = (part[0].offset, part[-1].offset + 1)
                self._uncommitted.setdefault(tp, part[0].offset)
        return Polled(records, ranges)

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
        types: Counter[str] = Counter()
        for start in range(0, len(records), _SLICE):
            more_decoded, more_rejected = decode_all(records[start:start + _SLICE], types)
            decoded += more_decoded
            rejected += more_rejected
            await asyncio.sleep(0)
        count_consumed(types)

        async def lookup() -> dict[str, AccountInfo]:
            async with connection(self._pool) as conn:
                return await lookup_accounts(conn, list({e.account_id for _, e in decoded}))

        accounts = await retry_transient(lookup, what="account lookup", stopping=self._halt)
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

    async def _apply(self, debit: DebitBatch) -> BatchResult:
        """One debit statement, retried while the database is out (or until we stop)."""
        async def write() -> BatchResult:
            async with connection(self._pool) as conn:
                started = time.perf_counter()
                result = await apply_usage(conn, debit)
                metrics.DEBIT_SECONDS.observe(time.perf_counter() - started)
            return result

        return await retry_transient(write, what="debit transaction", stopping=self._halt)

    async def _write(self, debit: DebitBatch) -> IsolatedDebit:
        """The batch's debit: whole, or all but the events the database refuses."""
        written = await debit_isolating(self._apply, debit)
        committed_at = time.time()
        metrics.EVENT_TO_COMMIT_SECONDS.observe_many(
            max(0.0, committed_at - usage.event_time.timestamp()) for usage in debit.usage)
        return written

    async def _acknowledge(self, polled: Polled, prepared: PreparedBatch,
                           rejected: list[Rejected], written: asyncio.Task[IsolatedDebit],
                           previous: asyncio.Task[None] | None) -> None:
        """DLQ and offsets of a batch, once the previous one is acknowledged and this one
        written (a failure of either is raised here, before any offset is committed)."""
        if previous is not None:
            await previous
        isolated = await written
        rejected = rejected + prepared.rejected + [
            Rejected(prepared.rated_records[index], why.code, why.message)
            for index, why in isolated.refused]
        if rejected:
            await self._dead_letters.publish(rejected, self._halt)
        await self._commit(polled)
        if self._unbilled:  # this batch's: acknowledgements run in batch order
            self._unbilled.popleft()
        self._unbilled_since = None
        self._count(isolated.result, rejected)
        if prepared.repeated:
            metrics.EVENTS_DUPLICATE.inc(prepared.repeated)

    async def _commit(self, polled: Polled) -> None:
        # A refused commit is harmless: the ledger's unique key absorbs the redelivery.
        offsets = {tp: end for tp, (_first, end) in polled.ranges.items()}
        if await commit_offsets(self._consumer, offsets):
            self._uncommitted.update(offsets)
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
        _LIVE.discard(self)
        if self._starting:
            await self._consumer.stop()

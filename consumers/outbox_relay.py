"""Outbox relay: publishes unsent outbox rows to ``balance.events``, at least once, in order.

Order: one account's balance events are published in the order they were written,
whatever the number of replicas. Every relay takes a PostgreSQL advisory lock for
the transaction in which it claims and publishes a batch, so one relay publishes
at a time (the others find the lock taken and wait for the next poll), and it
publishes in ``seq`` order, which for one account is the order of its changes (each
is written under the account's row lock). aiokafka keeps one request in flight per
broker, so the records of a partition (keyed by account) arrive in that order.
Each event carries the account's ``version`` in ``data``, so a consumer can order
events or drop stale ones even across a relay crash (which re-publishes with the
same ids).

A row that cannot be published for a reason of its own (its data, a record the
broker refuses) is set aside: marked with its error, logged once, counted, and
tried again later with a growing delay, while the rows behind it are published.
An outage of Kafka or PostgreSQL rolls the batch back and is retried.

Sent rows are deleted once older than the retention (``RATING_OUTBOX_RETENTION_HOURS``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from consumers import metrics
from consumers.retry import Backoff, sleep_unless, transient_dependency
from rating.core.errors import describe
from rating.stores.db import connection
from rating.stores.outbox import cloud_event

log = logging.getLogger(__name__)

# One relay publishes at a time: any constant shared by every engine.
RELAY_LOCK_KEY = 0x7261_7469_6E67_01  # "rating" + 1

_DUE = "(next_attempt_at IS NULL OR next_attempt_at <= now())"
# One round trip per idle poll: is anything due, and the gauges.
_STATE = f"""
SELECT count(*) FILTER (WHERE {_DUE}) AS due, count(*) AS backlog,
       count(*) FILTER (WHERE failures > 0) AS set_aside
FROM outbox WHERE sent_at IS NULL
"""
_CLAIM = f"""
SELECT seq, event_id, type, account_id, balance, threshold, currency, extra, created_at,
       version, failures
FROM outbox WHERE sent_at IS NULL AND {_DUE} ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
"""
# A row that failed n times is tried again after 2^(n-1) minutes, at most an hour.
_SET_ASIDE = """
UPDATE outbox SET failures = failures + 1, last_error = r.error,
       next_attempt_at = now() + least(3600, 60 * power(2, failures)) * interval '1 second'
FROM unnest($1::bigint[], $2::text[]) AS r(seq, error)
WHERE outbox.seq = r.seq
"""
_PURGE = """
DELETE FROM outbox WHERE seq IN (
    SELECT seq FROM outbox WHERE sent_at < now() - $1 * interval '1 second'
    ORDER BY sent_at LIMIT $2)
"""
_PURGE_BATCH = 10_000


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, topic: str, *,
                 idle_poll_s: float = 0.1, batch: int = 500,
                 retention_s: float = 7 * 24 * 3600.0, purge_every_s: float = 60.0) -> None:
        self._pool = pool
        self._producer = producer
        self._topic = topic
        self._idle_poll_s = idle_poll_s
        self._batch = batch
        self._retention_s = retention_s
        self._purge_every_s = purge_every_s
        self._next_purge = 0.0
        self.stopping = asyncio.Event()

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        backoff = Backoff(max(self._idle_poll_s, 0.01), 5.0)
        failures = Backoff(1.0, 60.0)
        while not self.stopping.is_set():
            try:
                sent = await self.relay_once()
                await self._purge_if_due()
                backoff.reset()
                failures.reset()
            except Exception as exc:
                dependency = transient_dependency(exc)
                if dependency is None:  # a bug, not an outage: never a reason to stop
                    metrics.COMPONENT_FAILURES.labels("outbox-relay").inc()
                    delay = await failures.wait(self.stopping)
                    log.error("outbox relay failed (%s); retried after %.1f s",
                              describe(exc), delay, exc_info=exc)
                    continue
                metrics.TRANSIENT_ERRORS.labels(dependency).inc()
                delay = await backoff.wait(self.stopping)
                log.warning("outbox relay failed (%s); retried after %.1f s", describe(exc), delay)
                continue
            if sent < self._batch:
                await sleep_unless(self.stopping, self._idle_poll_s)

    async def relay_once(self) -> int:
        """Publish one batch of due rows (if this relay holds the lock); return how many."""
        async with connection(self._pool) as conn:
            state = await conn.fetchrow(_STATE)
            assert state is not None  # an aggregate always returns its row
            metrics.OUTBOX_ROWS_SET_ASIDE.set(state["set_aside"])
            # Set before sending too: while the broker is out, sends fail and the
            # backlog it shows is what is waiting (RatingOutboxBacklogGrowing).
            metrics.OUTBOX_BACKLOG.set(state["backlog"])
            if not state["due"]:
                return 0
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                           RELAY_LOCK_KEY):
                    return 0  # another relay publishes now; it keeps the order
                rows = await conn.fetch(_CLAIM, self._batch)
                sent, failed = await self._publish(rows)
                if sent:
                    await conn.execute("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1)",
                                       [r["seq"] for r in sent])
                if failed:
                    await conn.execute(_SET_ASIDE, [r["seq"] for r, _ in failed],
                                       [error for _, error in failed])
        for row, error in failed:
            metrics.OUTBOX_ROW_FAILURES.inc()
            log_at = logging.ERROR if row["failures"] == 0 else logging.DEBUG
            log.log(log_at, "outbox row %s (%s) could not be published (%s); set aside, tried "
                    "again later", row["event_id"], row["type"], error)
        for type_, n in Counter(r["type"] for r in sent).items():
            metrics.BALANCE_EVENTS_PUBLISHED.labels(type_).inc(n)
        metrics.OUTBOX_BACKLOG.set(max(0, state["backlog"] - len(sent)))
        return len(sent)

    async def _publish(self, rows: Sequence[asyncpg.Record]
                       ) -> tuple[list[asyncpg.Record], list[tuple[asyncpg.Record, str]]]:
        """Send ``rows`` in order; an outage raises, a row's own failure is returned."""
        sending: list[tuple[asyncpg.Record, asyncio.Future[object]]] = []
        failed: list[tuple[asyncpg.Record, str]] = []
        for r in rows:
            try:
                value = cloud_event(r["event_id"], r["type"], r["account_id"], r["balance"],
                                    r["threshold"], r["currency"],
                                    {**_extra(r["extra"]), "version": r["version"]},
                                    r["created_at"])
                future = await self._producer.send(self._topic, key=r["account_id"].encode(),
                                                   value=value)
            except Exception as exc:
                if transient_dependency(exc) is not None:
                    raise
                failed.append((r, f"{type(exc).__name__}: {exc}"))
                continue
            sending.append((r, future))
        outcomes = await asyncio.gather(*(f for _, f in sending), return_exceptions=True)
        sent = []
        for (r, _), outcome in zip(sending, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if transient_dependency(outcome) is not None or not isinstance(
                        outcome, Exception):
                    raise outcome
                failed.append((r, f"{type(outcome).__name__}: {outcome}"))
            else:
                sent.append(r)
        return sent, failed

    async def _purge_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self._purge_every_s
        purged = await self.purge_sent()
        if purged:
            log.info("purged %d sent outbox rows older than %.0f hours", purged,
                     self._retention_s / 3600)

    async def purge_sent(self) -> int:
        """Delete sent rows older than the retention; return how many."""
        total = 0
        while True:
            async with connection(self._pool) as conn:
                status = await conn.execute(_PURGE, self._retention_s, _PURGE_BATCH)
            deleted = int(status.split()[-1])
            total += deleted
            metrics.OUTBOX_PURGED.inc(deleted)
            if deleted < _PURGE_BATCH or self.stopping.is_set():
                return total


def _extra(raw: object) -> dict[str, object]:
    if isinstance(raw, str):
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else {}
    return {}

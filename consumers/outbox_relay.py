"""Outbox relay: publishes unsent outbox rows to ``balance.events``, at least once.

Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several relays share the work
without publishing a row twice in normal operation; a crash between publish and
mark re-publishes with the same stable ``id``, which consumers drop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from consumers import metrics
from consumers.retry import Backoff, sleep_unless, transient_dependency
from rating.stores.outbox import cloud_event

log = logging.getLogger(__name__)

_CLAIM = """
SELECT seq, event_id, type, account_id, balance, threshold, currency, extra, created_at
FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
"""


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, topic: str, *,
                 idle_poll_s: float = 0.1, batch: int = 500) -> None:
        self._pool = pool
        self._producer = producer
        self._topic = topic
        self._idle_poll_s = idle_poll_s
        self._batch = batch
        self.stopping = asyncio.Event()

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        backoff = Backoff(max(self._idle_poll_s, 0.01), 5.0)
        while not self.stopping.is_set():
            try:
                sent = await self.relay_once()
                backoff.reset()
            except Exception as exc:
                dependency = transient_dependency(exc)
                if dependency is None:
                    raise
                metrics.TRANSIENT_ERRORS.labels(dependency).inc()
                delay = await backoff.wait(self.stopping)
                log.warning("outbox relay failed (%s); retried after %.1f s", exc, delay)
                continue
            if sent < self._batch:
                await sleep_unless(self.stopping, self._idle_poll_s)

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows; return how many were sent."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._batch)
            if rows:
                futures = [
                    await self._producer.send(
                        self._topic, key=r["account_id"].encode(),
                        value=cloud_event(r["event_id"], r["type"], r["account_id"],
                                          r["balance"], r["threshold"], r["currency"],
                                          _extra(r["extra"]), r["created_at"]))
                    for r in rows
                ]
                await asyncio.gather(*futures)
                await conn.execute("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1)",
                                   [r["seq"] for r in rows])
                for type_, n in Counter(r["type"] for r in rows).items():
                    metrics.BALANCE_EVENTS_PUBLISHED.labels(type_).inc(n)
            backlog = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        metrics.OUTBOX_BACKLOG.set(max(0, backlog - len(rows)))
        return len(rows)


def _extra(raw: object) -> dict[str, object]:
    if isinstance(raw, str):
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else {}
    return {}

"""Helpers shared by the integration and system tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Producer

from consumers.usage_consumer import UsageConsumer
from engine.services import ensure_topics
from rating.settings import Settings
from rating.tariffbook.book import TariffStore

REPO = Path(__file__).resolve().parent.parent


FLAT_PLAN = """
[plan]
id = "flat"
currency = "EUR"
effective_from = "2026-01-01T00:00:00Z"

[services.call]
rates = "rates/flat/call.csv"
increment = "60/60"
connect_fee = "0.00"

[services.tollfree]
rates = "rates/flat/tollfree.csv"
increment = "60/60"

[services.sms]
rates = "rates/flat/sms.csv"

[services.stt]
rate = "0.024"
increment = "15/15"
"""
FLAT_CALLS = ("country,prefix,rate,connect_fee,increment\n"
              "GB,,0.10,,\nGB,447,0.30,0.05,30/6\nFR,,0.20,,\n")
FLAT_TOLLFREE = "country,direction,rate\nGB,inbound,0.02\nGB,outbound,0.04\n"
FLAT_SMS = "country,rate\nGB,0.05\nFR,0.07\n"


def write_flat_tariffs(root: Path) -> Path:
    """A one-plan tariff directory ("flat", EUR) with round prices tests can check by hand."""
    (root / "plans").mkdir(parents=True)
    (root / "rates" / "flat").mkdir(parents=True)
    (root / "plans" / "flat.toml").write_text(FLAT_PLAN)
    (root / "rates" / "flat" / "call.csv").write_text(FLAT_CALLS)
    (root / "rates" / "flat" / "tollfree.csv").write_text(FLAT_TOLLFREE)
    (root / "rates" / "flat" / "sms.csv").write_text(FLAT_SMS)
    return root


def usage_event(type_: str, event_id: str, account: str, data: dict[str, Any], *,
                source: str = "switch-test-1", time_: str | None = "2026-11-25T10:00:00Z") -> bytes:
    event: dict[str, Any] = {"specversion": "1.0", "id": event_id, "source": source,
                             "type": type_, "subject": account, "data": data}
    if time_ is not None:
        event["time"] = time_
    return orjson.dumps(event)


def publish_with_librdkafka(bootstrap: str, topic: str,
                            messages: Iterable[tuple[str | None, bytes]]) -> None:
    """Publish like a voice switch would, with an independent client (librdkafka)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                         "acks": "all", "linger.ms": 5})
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in messages:
        producer.produce(topic, value=value, key=key.encode() if key else None,
                         on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not failures, (remaining, failures)


async def create_topics(settings: Settings, bootstrap: str, usage_partitions: int = 4) -> None:
    await ensure_topics(bootstrap, {settings.usage_topic: usage_partitions,
                                    settings.dlq_topic: 1, settings.balance_topic: 2})


@contextlib.asynccontextmanager
async def running_consumer(settings: Settings, pool: asyncpg.Pool,
                           tariffs: TariffStore | None = None) -> AsyncIterator[UsageConsumer]:
    bootstrap = ",".join(settings.kafka_bootstrap or ())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    consumer = UsageConsumer(settings, bootstrap, pool, tariffs or TariffStore(
        settings.tariffs_dir), producer)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.request_stop()
        await task
        await consumer.close()
        await producer.stop()


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 60,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def read_topic(bootstrap: str, topic: str, expected: int,
                     timeout_s: float = 30) -> list[Any]:
    """Read ``expected`` messages from the start of ``topic`` (no group)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(records)
    finally:
        await consumer.stop()
    return messages


async def ledger_explains_balances(pool: asyncpg.Pool) -> list[str]:
    """Accounts where balance != opening_balance + sum(ledger) (invariant 2); [] if none."""
    rows = await pool.fetch(
        """
        SELECT a.id FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger GROUP BY account_id) l
               ON l.account_id = a.id
        WHERE a.balance <> a.opening_balance + coalesce(l.total, 0)
        """)
    return [r["id"] for r in rows]


def engine_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a ``rating-engine`` process use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update({
        "RATING_DATABASE_URL": settings.database_url or "",
        "RATING_KAFKA_BOOTSTRAP": ",".join(settings.kafka_bootstrap or ()),
        "RATING_DATA_DIR": str(settings.data_dir),
        "RATING_TARIFFS_DIR": str(settings.tariffs_dir),
        "RATING_METRICS_PORT": str(settings.metrics_port),
        "RATING_HTTP_PORT": str(settings.http_port),
        "RATING_USAGE_TOPIC": settings.usage_topic,
        "RATING_DLQ_TOPIC": settings.dlq_topic,
        "RATING_BALANCE_TOPIC": settings.balance_topic,
        "RATING_CONSUMER_GROUP": settings.consumer_group,
        "RATING_RECHARGE_GROUP": settings.recharge_group,
        # `run` refuses to start without a payment provider; tests use the simulated one.
        "RATING_PAYMENT_SIMULATION": settings.payment_simulation or "succeed",
    })
    env.update(extra)
    return env


class TcpProxy:
    """A loopback TCP proxy that a test can cut and restore, to simulate an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

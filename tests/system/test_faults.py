"""The engine as a process under faults: outages while events flow, replicas killed again and
again, hostile input beside valid usage. It stays up, resumes alone, and balances are exact."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
import pytest
from aiokafka import AIOKafkaConsumer

from engine.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.migrations import migrate
from tests.support import (
    TcpProxy,
    create_topics,
    engine_env,
    ledger_explains_balances,
    publish_with_librdkafka,
    read_topic,
    usage_event,
    wait_until,
)
from tests.system.test_engine_process import (
    ENGINE,
    REPO,
    call_events,
    expected_debits,
    start_engine,
    wait_for_log,
)

pytestmark = pytest.mark.system
FAST_PG = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


async def ledger_count(dsn: str) -> int:
    """Rows in the ledger, or -1 while the database is away."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return -1
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ledger"))
    finally:
        await conn.close()


async def progress(dsn: str, beyond: int, what: str, timeout_s: float = 90) -> int:
    async def moved() -> bool:
        return await ledger_count(dsn) > beyond

    await wait_until(moved, timeout_s=timeout_s, what=what)
    return await ledger_count(dsn)


class Publisher:
    """A voice switch sending ``events`` in small bursts, in a thread, until done."""

    def __init__(self, bootstrap: str, topic: str, events: list[tuple[str, bytes]],
                 burst: int = 40, every_s: float = 0.2) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._args = (bootstrap, topic, events, burst, every_s)
        self.error: BaseException | None = None

    def _run(self) -> None:
        bootstrap, topic, events, burst, every_s = self._args
        try:
            for start in range(0, len(events), burst):
                publish_with_librdkafka(bootstrap, topic, events[start:start + burst])
                time.sleep(every_s)
        except BaseException as exc:  # reported by done()
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    async def done(self) -> None:
        await asyncio.to_thread(self._thread.join, 180)
        assert self.error is None, self.error


@pytest.fixture
async def own_services(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, TcpProxy]]:
    """A PostgreSQL server this test may stop, and a broker behind a proxy it may cut."""
    pg = EmbeddedPostgres(tmp_path / "pg", server_options=FAST_PG, port=free_port())
    await pg.start()
    proxy_port = free_port()
    broker = EmbeddedBroker(tmp_path / "broker", advertised_port=proxy_port)
    await broker.start()
    proxy = TcpProxy("127.0.0.1", broker.port)
    proxy.port = proxy_port
    await proxy.start()
    try:
        yield pg, proxy
    finally:
        await proxy.cut()
        await broker.close()
        await pg.close()


async def test_database_stopped_twice_and_broker_cut_twice_while_events_flow(
        settings: Settings, tmp_path: Path,
        own_services: tuple[EmbeddedPostgres, TcpProxy]) -> None:
    pg, proxy = own_services
    bootstrap = f"127.0.0.1:{proxy.port}"
    settings = replace(settings, database_url=pg.dsn, kafka_bootstrap=(bootstrap,))
    await create_topics(settings, bootstrap, usage_partitions=4)
    conn = await asyncpg.connect(pg.dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    accounts = [f"acct-{i}" for i in range(10)]
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=2)
    try:
        await AccountStore(pool).create_many(
            NewAccount(a, "standard", "EUR", parse_amount("1000")) for a in accounts)
    finally:
        await pool.close()
    flowing = call_events("o", accounts, 3000)
    # Sent after each recovery, so that billing has something to resume with even when
    # the flow above has all been sent (and billed) by then.
    after = [call_events(f"after-{n}", accounts, 40) for n in range(4)]
    events = flowing + [e for burst in after for e in burst]
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(settings, RATING_BATCH_MAX_EVENTS="100"), log)
    publisher = Publisher(bootstrap, settings.usage_topic, flowing, burst=40, every_s=0.25)

    async def resumed(burst: list[tuple[str, bytes]], seen: int, what: str) -> int:
        await asyncio.to_thread(publish_with_librdkafka, bootstrap, settings.usage_topic, burst)
        return await progress(pg.dsn, seen, what)

    try:
        await wait_for_log(log, "rating engine running", engine)
        publisher.start()
        seen = await progress(pg.dsn, 0, "first events billed")
        for outage in range(2):
            await pg.close()  # a fast shutdown: sessions terminated, as in a restart
            await asyncio.sleep(8)
            pg = EmbeddedPostgres(pg.data_dir, server_options=FAST_PG, port=pg.port)
            await pg.start()
            seen = await resumed(after[2 * outage], seen,
                                 f"billing resumed after database outage {outage + 1}")
            await proxy.cut()
            await asyncio.sleep(4)
            await proxy.start()
            seen = await resumed(after[2 * outage + 1], seen,
                                 f"billing resumed after broker cut {outage + 1}")
            assert engine.poll() is None, log.read_text()[-3000:]
        await publisher.done()

        async def all_billed() -> bool:
            return await ledger_count(pg.dsn) >= len(events)

        await wait_until(all_billed, timeout_s=120, what="every event billed")
        await asyncio.sleep(1)
        assert engine.poll() is None, log.read_text()[-3000:]
    finally:
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(60)
    assert code == 0, log.read_text()[-3000:]
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=2)
    try:
        assert await pool.fetchval("SELECT count(*) FROM ledger") == len(events)
        expected = await expected_debits(settings, events, "standard")
        rows = await pool.fetch("SELECT id, opening_balance - balance AS debited FROM accounts")
        assert {r["id"]: r["debited"] for r in rows} == expected
        assert await ledger_explains_balances(pool) == []
    finally:
        await pool.close()
        await pg.close()


async def test_three_engines_killed_again_and_again_bill_exactly_and_lose_no_refusal(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    await create_topics(settings, kafka_bootstrap, usage_partitions=6)
    accounts = [f"acct-{i}" for i in range(30)]
    await AccountStore(pool).create_many(
        NewAccount(a, "standard", "EUR", parse_amount("1000")) for a in accounts)
    valid = call_events("k", accounts, 6000)
    refused = [("acct-0", b"not json %d" % i) if i % 2 else
               (f"nobody-{i}", usage_event("usage.call", f"x{i}", f"nobody-{i}", {
                   "call_id": "c", "destination": "+442071234567", "from_s": 0, "to_s": 60}))
               for i in range(300)]
    stream = valid[:]
    for i, item in enumerate(refused):
        stream.insert(i * 20 + 7, item)
    env = engine_env(replace(settings, metrics_port=0, http_port=0),
                     RATING_BATCH_MAX_EVENTS="200")
    logs = [tmp_path / f"engine-{n}.log" for n in range(3)]
    engines = [start_engine(env, log) for log in logs]
    publisher = Publisher(kafka_bootstrap, settings.usage_topic, stream, burst=300,
                          every_s=0.3)
    chooser = random.Random(13)
    try:
        for n, engine in enumerate(engines):
            await wait_for_log(logs[n], "rating engine running", engine)
        publisher.start()
        for _kill in range(4):
            await asyncio.sleep(2.5)
            n = chooser.randrange(3)
            engines[n].kill()  # SIGKILL: nothing finished, nothing committed
            engines[n].wait(10)
            engines[n] = start_engine(env, logs[n])
        await publisher.done()

        async def all_billed() -> bool:
            return int(await pool.fetchval("SELECT count(*) FROM ledger")) >= len(valid)

        await wait_until(all_billed, timeout_s=150, what="every valid event billed")
        wanted = {raw for _, raw in refused}
        dlq = await read_until(kafka_bootstrap, settings.dlq_topic,
                               lambda got: wanted <= {m.value for m in got})
    finally:
        for engine in engines:
            engine.send_signal(signal.SIGTERM)
        codes = [engine.wait(60) for engine in engines]
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    await asyncio.sleep(1)
    assert await pool.fetchval("SELECT count(*) FROM ledger") == len(valid)
    expected = await expected_debits(settings, valid, "standard")
    rows = await pool.fetch("SELECT id, opening_balance - balance AS debited FROM accounts")
    assert {r["id"]: r["debited"] for r in rows} == expected
    assert await ledger_explains_balances(pool) == []
    # Every refused record is in the DLQ (a redelivery may have put one there twice).
    assert {m.value for m in dlq} == {raw for _, raw in refused}


async def read_until(bootstrap: str, topic: str, done: Callable[[list[Any]], bool],
                     timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic`` from the start, read until ``done(records)``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while not done(records) and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def hostile_records(count: int, seed: int = 7) -> list[tuple[str | None, bytes | None]]:
    """What fuzzing a usage topic sends: every shape of bytes that is not a usage event."""
    chooser = random.Random(seed)
    valid = orjson.loads(usage_event("usage.call", "h", "acct-0", {
        "call_id": "c", "destination": "+442071234567", "from_s": 0, "to_s": 60}))

    def event(**changes: object) -> bytes:
        return orjson.dumps({**valid, "id": f"h{chooser.random()}", **changes})

    shapes: list[Callable[[], bytes | None]] = [
        lambda: bytes(chooser.randrange(256) for _ in range(chooser.randrange(1, 200))),
        lambda: event()[:chooser.randrange(1, 60)],
        lambda: b"[" * 10_000 + b"]" * 10_000,
        lambda: event()[:-1] + b', "n": 1e400}',
        lambda: event()[:-1] + b', "n": ' + b"9" * 500 + b"}",
        lambda: event()[:-1] + b', "n": NaN}',
        lambda: event().replace(b'"to_s":60', b'"to_s":1' + b"0" * 30),
        lambda: event(id="nul\u0000id"),
        lambda: b'{"specversion": "1.0", "id": "\xff\xfe", "source": "s"}',
        lambda: event(subject="'; DROP TABLE accounts; --"),
        lambda: event(type="usage.fax"),
        lambda: None,  # a tombstone
    ]
    one_mb = event(data={**valid["data"], "destination": "+" + "7" * 1_000_000})
    records: list[tuple[str | None, bytes | None]] = []
    for i in range(count):
        value = one_mb if i % 500 == 0 else shapes[i % len(shapes)]()
        records.append((None if value is None else "acct-0", value))
    return records


async def test_ten_thousand_hostile_records_beside_valid_events(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    await create_topics(settings, kafka_bootstrap, usage_partitions=4)
    accounts = [f"acct-{i}" for i in range(20)]
    await AccountStore(pool).create_many(
        NewAccount(a, "standard", "EUR", parse_amount("1000")) for a in accounts)
    valid = call_events("v", accounts, 2000)
    hostile = hostile_records(10_000)
    stream: list[tuple[str | None, bytes | None]] = []
    for i, item in enumerate(hostile):
        stream.append(item)
        if i % 5 == 0:
            stream.append(valid[i // 5])
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(settings), log)
    try:
        await wait_for_log(log, "rating engine running", engine)
        _publish_raw(kafka_bootstrap, settings.usage_topic, stream)

        async def all_billed() -> bool:
            return int(await pool.fetchval("SELECT count(*) FROM ledger")) >= len(valid)

        await wait_until(all_billed, timeout_s=120, what="every valid event billed")
        dlq = await read_topic(kafka_bootstrap, settings.dlq_topic, len(hostile),
                               timeout_s=90)
        peak_kb = _vm_hwm_kb(engine.pid)
        assert engine.poll() is None, log.read_text()[-3000:]
    finally:
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(60)
    assert code == 0, log.read_text()[-3000:]
    assert await pool.fetchval("SELECT count(*) FROM ledger") == len(valid)
    expected = await expected_debits(settings, valid, "standard")
    rows = await pool.fetch("SELECT id, opening_balance - balance AS debited FROM accounts")
    assert {r["id"]: r["debited"] for r in rows} == expected
    offsets = {(int(dict(m.headers)["source_partition"]), int(dict(m.headers)["source_offset"]))
               for m in dlq}
    assert len(offsets) == len(hostile)  # every hostile record, each once
    assert peak_kb < 400 * 1024, f"engine peak RSS {peak_kb // 1024} MB"


def _publish_raw(bootstrap: str, topic: str,
                 records: list[tuple[str | None, bytes | None]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                         "message.max.bytes": 5_000_000, "linger.ms": 5})
    failures: list[str] = []
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key.encode() if key else None,
                                 on_delivery=lambda err, _m: failures.append(str(err))
                                 if err else None)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0 and not failures, failures[:3]


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return int(psutil.Process(pid).memory_info().rss // 1024)


@pytest.mark.parametrize("variable", ["RATING_HTTP_PORT", "RATING_METRICS_PORT"])
async def test_a_busy_port_fails_start_up_with_one_line_naming_it(
        tmp_path: Path, variable: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
        env.update({"RATING_DATA_DIR": str(tmp_path / "data"), "RATING_HTTP_HOST": "127.0.0.1",
                    "RATING_HTTP_PORT": "0", "RATING_METRICS_PORT": "0",
                    "RATING_PAYMENT_SIMULATION": "succeed", variable: str(port)})
        result = subprocess.run([*ENGINE, "run"], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and variable in errors[0] and "in use" in errors[0], result.stderr

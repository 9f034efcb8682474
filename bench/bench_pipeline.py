"""The write path end to end, against its raw limits, on durable embedded services.

Run ``python bench/bench_pipeline.py [--events N]`` (``make bench``). One run starts
its own PostgreSQL (durable: fsync and synchronous_commit on, data in a temporary
directory) and broker, migrates, creates the accounts on the sample plan
``standard`` and measures:

  (a1) raw batched debit: ``rating.stores.ledger.apply_usage`` on pre-rated batches of
       the engine's batch size (RATING_BATCH_MAX_EVENTS), one transaction each;
  (a2) raw Kafka fetch: an aiokafka consumer (the engine's fetch settings) reading
       the pre-published events;
  (b)  end to end: the same events read by a real ``UsageConsumer`` (default
       settings, engine-style pool and producer) in a subprocess until all are
       committed;
  (c)  naive baseline: one transaction per event (INSERT … ON CONFLICT DO NOTHING,
       then UPDATE accounts), sequential;
  (d)  latency at a fixed offered load (5 000 events/s for 20 s, on a fresh broker,
       published with librdkafka's default linger): from each event's
       ``time`` (stamped when it is sent) to the end of the Kafka offset commit of
       its batch, which follows the debit transaction's commit (so stricter than the
       database commit alone). It starts right after a CHECKPOINT, so that its WAL
       goes to recycled segment files as on a server in service, not to new ones that
       a freshly created cluster zero-fills (16 MB written and fsynced each, which
       stalls the commits waiting behind it); the segments it still creates are
       counted;
  (d0) the same load for as long, read by a bare aiokafka consumer (no database, a
       fresh broker too): the latency floor of the broker and client alone, to tell
       it from the engine's share;
  (e)  peak RSS (VmHWM) of the engine subprocesses of (b) and (d).

For (b) it also reports the share of time inside the debit transaction and the CPU
seconds per event of the engine, PostgreSQL and the broker (where the 2 cores go).
``--profile FILE`` samples the (b) engine with py-spy (collapsed stacks).

How (b) and (d) are timed: the subprocess runs a ``UsageConsumer`` subclass whose
only additions are clocks at the return of a non-empty fetch (``_poll``) and at the
end of the offset commit (``_commit``), which every batch passes through after its
debit transaction and DLQ publish. (b) is events / (last offset commit - first
non-empty fetch), so the group join before the first fetch is excluded (reported
separately as start-up). Every event is then checked in the ledger.

Prints a table and PASS/FAIL per target; exits 0 whatever the verdicts, non-zero
only when the benchmark itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import itertools
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from consumers.usage_consumer import fetch_settings  # noqa: E402
from demo.simulator import TrafficGenerator, destinations_for  # noqa: E402
from engine.embedded import EmbeddedBroker, EmbeddedPostgres  # noqa: E402
from rating.core.events import decode_usage_event  # noqa: E402
from rating.core.rate import rate  # noqa: E402
from rating.settings import Settings  # noqa: E402
from rating.stores.accounts import AccountStore, NewAccount  # noqa: E402
from rating.stores.db import create_pool  # noqa: E402
from rating.stores.ledger import RatedUsage, apply_usage  # noqa: E402
from rating.stores.migrations import migrate  # noqa: E402
from rating.tariffbook.book import TariffStore  # noqa: E402

TARIFFS = REPO / "tariffs"
PLAN = "standard"
USAGE_PARTITIONS = 8  # as the engine creates usage.events
# The raw debit writes batches of the engine's own batch size (RATING_BATCH_MAX_EVENTS).
DEBIT_BATCH = Settings.from_env(os.environ).batch_max_events

TARGET_E2E_PER_S = 50_000
TARGET_RAW_RATIO = 0.5
TARGET_NAIVE_RATIO = 10.0
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 250.0

SOURCE_RAW = "switch-bench-raw"
SOURCE_NAIVE = "switch-bench-naive"
SOURCE_E2E = "switch-bench-e2e"
SOURCE_WARMUP = "switch-bench-warmup"
SOURCE_LATENCY = "switch-bench-latency"


def _die_with_parent() -> None:
    """Runs in a forked child: SIGTERM when the benchmark dies, so nothing is left behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# ---------------------------------------------------------------------------------------
# The engine side: runs in its own process (``--engine-child``).
# ---------------------------------------------------------------------------------------


def _engine_child(config: dict[str, Any]) -> int:
    return asyncio.run(_engine_child_main(config))


class _Probe:
    """What the engine subprocess observes of its batches (state kept outside the consumer)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.latency_source: str | None = config.get("latency_source")
        self.target: int | None = config.get("target")
        self.done = asyncio.Event()
        self.latencies: list[float] = []
        self.held: list[float] = []  # per timed event: its fetch's return -> its commit
        self.fetched_at: dict[int, float] = {}  # id(first record of a batch) -> fetch time
        self.first_in = 0.0
        self.last_out = 0.0
        self.processed = 0
        trace = config.get("trace")
        self.trace = open(trace, "w", buffering=1) if trace else None

    def fetched(self, records: Sequence[Any]) -> None:
        now = time.perf_counter()
        self.first_in = self.first_in or now
        self.fetched_at[id(records[0])] = now

    def batch_done(self, records: Sequence[Any]) -> None:
        self.last_out = time.perf_counter()
        entered = self.fetched_at.pop(id(records[0]), self.last_out)
        finished = time.time()
        if self.latency_source is not None:
            worst = 0.0
            for record in records:
                event = orjson.loads(record.value or b"{}")
                if event.get("source") == self.latency_source:
                    latency = finished - datetime.fromisoformat(event["time"]).timestamp()
                    self.latencies.append(latency)
                    self.held.append(self.last_out - entered)
                    worst = max(worst, latency)
            if self.trace is not None:
                self.trace.write(f"{finished:.3f} n={len(records)} "
                                 f"fetch_to_commit_ms={(self.last_out - entered) * 1000:.1f} "
                                 f"worst_ms={worst * 1000:.1f}\n")
        if self.processed == 0:
            print("first-commit", flush=True)
        self.processed += len(records)
        self.check()

    def check(self) -> None:
        if self.target is not None and self.processed >= self.target:
            self.done.set()

    async def read_target(self) -> None:
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip():
            self.target = int(line)
            self.check()


async def _engine_child_main(config: dict[str, Any]) -> int:
    from consumers import metrics
    from consumers.kafka_batches import Record
    from consumers.usage_consumer import UsageConsumer
    from engine.assembly import kafka_producer, load_tariff_store

    # Tuning variables (RATING_BATCH_MAX_EVENTS, RATING_FETCH_MAX_WAIT_MS, ...) apply as
    # they would to the engine; the services, topics and group are the benchmark's own.
    settings = dataclasses.replace(
        Settings.from_env(os.environ),
        database_url=config["dsn"], kafka_bootstrap=(config["bootstrap"],),
        tariffs_dir=TARIFFS, usage_topic=config["topic"], dlq_topic=config["dlq_topic"],
        balance_topic=config["balance_topic"], consumer_group=config["group"])
    probe = _Probe(config)

    class TimedConsumer(UsageConsumer):
        """The engine's consumer, observed at its fetch and its offset commit; nothing else
        changes (the hooks are the two steps every batch passes through, however ``run``
        schedules the work in between)."""

        async def _poll(self) -> list[Record]:
            records = await super()._poll()
            if records:
                probe.fetched(records)
            return records

        async def _commit(self, records: list[Record]) -> None:
            await super()._commit(records)
            probe.batch_done(records)

    started = time.perf_counter()
    pool = await create_pool(settings.database_url or "", max_size=10)  # as the engine's
    try:
        tariffs = load_tariff_store(settings)  # as the engine loads it (then gc.freeze)
        async with kafka_producer(config["bootstrap"]) as producer:
            consumer = TimedConsumer(settings, config["bootstrap"], pool, tariffs, producer)
            await consumer.start()
            try:
                task = asyncio.create_task(consumer.run(), name="usage-consumer")
                reader = (asyncio.create_task(probe.read_target())
                          if probe.target is None else None)
                waiter = asyncio.create_task(probe.done.wait())
                await asyncio.wait(
                    [task, waiter], timeout=config["timeout_s"],
                    return_when=asyncio.FIRST_COMPLETED)
                consumer.request_stop()
                if reader is not None:
                    reader.cancel()
                waiter.cancel()
                await task  # a consumer failure surfaces here
                if not probe.done.is_set():
                    print(f"engine: only {probe.processed} of {probe.target} events processed "
                          f"within {config['timeout_s']} s", file=sys.stderr)
                    return 3
            finally:
                await consumer.close()
    finally:
        await pool.close()
    debit = {s.name: s.value for m in metrics.DEBIT_SECONDS.collect() for s in m.samples}
    batches = {s.name: s.value for m in metrics.BATCH_EVENTS.collect() for s in m.samples}
    latencies = sorted(probe.latencies)
    held = sorted(probe.held)
    print(json.dumps({
        "events": probe.processed,
        "busy_s": probe.last_out - probe.first_in,
        "startup_s": probe.first_in - started,
        "debit_s": debit.get("rating_debit_transaction_seconds_sum", 0.0),
        "batches": int(batches.get("rating_batch_events_count", 0)),
        "latency_n": len(latencies),
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "max": latencies[-1] if latencies else float("nan"),
        "held_p50": _percentile(held, 0.50),
        "held_p99": _percentile(held, 0.99),
        "hwm_kb": _vm_hwm_kb(),
        "cpu_s": _own_cpu_s(),
    }), flush=True)
    return 0


def _own_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tree_cpu_s(pid: int | None) -> float:
    """CPU seconds of a server process and its children, live or already reaped."""
    import psutil

    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    except psutil.Error:
        return 0.0
    return float(total)


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@dataclass
class EngineProcess:
    """The engine subprocess, seen from the benchmark."""

    proc: asyncio.subprocess.Process
    log: Path
    lines: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    @classmethod
    async def start(cls, config: dict[str, Any], log: Path,
                    profile: Path | None = None) -> EngineProcess:
        command = [sys.executable, str(Path(__file__).resolve()), "--engine-child",
                   json.dumps(config)]
        with log.open("ab") as handle:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=REPO, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=handle,
                preexec_fn=_die_with_parent)
            if profile is not None:  # sampled from outside; it ends with the engine
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                await asyncio.create_subprocess_exec(
                    py_spy, "record", "--nonblocking", "-r", "250", "-f", "raw",
                    "-o", str(profile), "-p", str(proc.pid), stdout=handle, stderr=handle)
        engine = cls(proc, log)
        asyncio.get_running_loop().create_task(engine._read())
        return engine

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            await self.lines.put(raw.decode().strip())
        await self.lines.put("")

    async def expect(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.lines.get(), max(0.01, remaining))
            except TimeoutError:
                raise self.failure(
                    f"no {prefix!r} from the engine within {timeout_s:.0f} s") from None
            if line.startswith(prefix):
                return line
            if line == "":
                await self.proc.wait()
                raise self.failure(f"engine exited with code {self.proc.returncode}")

    def send_target(self, target: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{target}\n".encode())

    async def result(self, timeout_s: float) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(await self.expect("{", timeout_s))
        await asyncio.wait_for(self.proc.wait(), 30)
        if self.proc.returncode != 0:
            raise self.failure(f"engine exited with code {self.proc.returncode}")
        return stats

    def failure(self, message: str) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return RuntimeError(f"{message}\n--- engine log ---\n{tail}")

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# ---------------------------------------------------------------------------------------
# The benchmark side.
# ---------------------------------------------------------------------------------------


@dataclass
class Results:
    raw_debit: float = 0.0
    raw_fetch: float = 0.0
    publish: float = 0.0
    e2e: dict[str, Any] = field(default_factory=dict)
    naive: float = 0.0
    latency: dict[str, Any] = field(default_factory=dict)
    offered: float = 0.0
    server: str = ""
    cpu: dict[str, float] = field(default_factory=dict)
    fetch_latency: dict[str, float] = field(default_factory=dict)
    wal_segments_created: int = 0


def account_ids(count: int) -> list[str]:
    return [f"bench-{i:06d}" for i in range(1, count + 1)]


def traffic(accounts: list[str], tariffs: TariffStore, source: str,
            seed: int) -> TrafficGenerator:
    return TrafficGenerator(accounts, destinations_for(tariffs), source=source, seed=seed)


def rated(events: Iterator[tuple[str, bytes]], count: int,
          tariffs: TariffStore) -> list[RatedUsage]:
    """Decode and rate ``count`` events as the consumer would (all accounts on PLAN)."""
    book = tariffs.book
    out = []
    for _account, raw in itertools.islice(events, count):
        event = decode_usage_event(raw)
        assert event.time is not None
        out.append(RatedUsage(rate(event, book, PLAN), event.time, False))
    return out


def publish_all(bootstrap: str, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                         "acks": "all", "linger.ms": 20, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000})
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(f"publishing failed: {remaining} unsent, errors {failures[:3]}")


def publish_paced(bootstrap: str, topic: str, events: Iterator[tuple[str, bytes]],
                  rate_per_s: float, duration_s: float) -> tuple[int, float]:
    """Publish at ``rate_per_s``, each event generated (and time-stamped) as it is sent."""
    # librdkafka's defaults otherwise (linger.ms 5), as a voice switch would run it.
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                         "acks": "all"})
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    # Connected and holding the topic's metadata before the clock starts: otherwise the
    # first events wait for the connection and their latency is the producer's.
    producer.list_topics(topic, timeout=10)
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < duration_s:
        due = int(elapsed * rate_per_s) - sent
        for key, value in itertools.islice(events, max(0, due)):
            producer.produce(topic, value=value, key=key.encode(), on_delivery=on_delivery)
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    elapsed = time.monotonic() - started
    remaining = producer.flush(30)
    if remaining or failures:
        raise RuntimeError(f"publishing failed: {remaining} unsent, errors {failures[:3]}")
    return sent, sent / elapsed


def engine_fetch_settings() -> dict[str, int]:
    """The usage consumer's fetch configuration, for the bare consumers of (a2) and (d0)."""
    return fetch_settings(Settings.from_env(os.environ))


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


async def wal_segments_created(pool: asyncpg.Pool) -> int:
    """WAL segment files this server has created (PostgreSQL 18's pg_stat_io)."""
    # Statistics are flushed by each backend at most once a second.
    await asyncio.sleep(1.1)
    await pool.execute("SELECT pg_stat_force_next_flush()")
    created = await pool.fetchval(
        "SELECT coalesce(sum(writes), 0) FROM pg_stat_io"
        " WHERE object = 'wal' AND context = 'init'")
    return int(created)


async def ledger_count(pool: asyncpg.Pool, source: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger WHERE event_source = $1",
                                   source))


async def create_topics(bootstrap: str, prefix: str) -> dict[str, str]:
    from engine.services import ensure_topics

    names = {"topic": f"{prefix}.usage", "dlq_topic": f"{prefix}.usage.dlq",
             "balance_topic": f"{prefix}.balance"}
    await ensure_topics(bootstrap, {names["topic"]: USAGE_PARTITIONS,
                                    names["dlq_topic"]: 1, names["balance_topic"]: 1})
    return names


@contextlib.asynccontextmanager
async def services(work: Path) -> AsyncIterator[tuple[EmbeddedPostgres, EmbeddedBroker]]:
    """Durable embedded PostgreSQL (server defaults) and the embedded broker."""
    async with EmbeddedPostgres(work / "postgres") as pg, EmbeddedBroker(work / "broker") as kb:
        yield pg, kb


def say(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, work: Path) -> Results:
    results = Results()
    tariffs = TariffStore(TARIFFS)
    accounts = account_ids(args.accounts)
    async with services(work) as (pg, kb):
        dsn, bootstrap = pg.dsn, kb.bootstrap
        pool = await create_pool(dsn, max_size=4)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                version = await conn.fetchval("SHOW server_version")
                fsync = await conn.fetchval("SHOW fsync")
                sync_commit = await conn.fetchval("SHOW synchronous_commit")
            results.server = (f"PostgreSQL {version} (fsync={fsync}, "
                              f"synchronous_commit={sync_commit})")
            if fsync != "on" or sync_commit != "on":
                raise RuntimeError(f"PostgreSQL is not durable: {results.server}")
            created, _ = await AccountStore(pool).create_many(
                NewAccount(a, PLAN, "EUR", balance=1_000_000 * 1_000_000) for a in accounts)
            await pool.execute("ANALYZE accounts")
            say(f"{created} accounts on plan {PLAN!r}; generating {args.events} events")

            # The events of (b), published once; (a2) reads them first.
            e2e_events = list(itertools.islice(
                traffic(accounts, tariffs, SOURCE_E2E, seed=1), args.events))
            e2e_topics = await create_topics(bootstrap, "bench.e2e")
            started = time.perf_counter()
            await asyncio.to_thread(publish_all, bootstrap, e2e_topics["topic"], e2e_events)
            results.publish = len(e2e_events) / (time.perf_counter() - started)
            del e2e_events
            say(f"published at {results.publish:,.0f}/s; (a2) raw fetch")
            results.raw_fetch = await measure_raw_fetch(bootstrap, e2e_topics["topic"],
                                                        args.events)

            say("(a1) raw batched debit")
            raw = rated(traffic(accounts, tariffs, SOURCE_RAW, seed=2), args.debit_events,
                        tariffs)
            results.raw_debit = await measure_raw_debit(pool, raw)
            del raw

            say("(c) naive: one transaction per event")
            naive = rated(traffic(accounts, tariffs, SOURCE_NAIVE, seed=3), args.naive_events,
                          tariffs)
            results.naive = await measure_naive(pool, naive)

            say("(b) end to end: UsageConsumer in a subprocess")
            config = {"dsn": dsn, "bootstrap": bootstrap, "group": "bench-e2e",
                      "target": args.events, "timeout_s": 240, **e2e_topics}
            cpu_before = (_tree_cpu_s(pg.pid), _tree_cpu_s(kb.pid))
            engine = await EngineProcess.start(config, work / "engine-e2e.log", args.profile)
            try:
                results.e2e = await engine.result(timeout_s=250)
            finally:
                await engine.close()
            results.cpu = {"engine": results.e2e["cpu_s"],
                           "postgres": _tree_cpu_s(pg.pid) - cpu_before[0],
                           "broker": _tree_cpu_s(kb.pid) - cpu_before[1]}
            in_ledger = await ledger_count(pool, SOURCE_E2E)
            if in_ledger != args.events:
                raise RuntimeError(f"end to end: {in_ledger} of {args.events} events in the "
                                   "ledger")

            # (d0) and (d) each get a broker of their own: the embedded broker keeps
            # everything in memory and its fetches slow down with all it holds (a bare
            # consumer's median went from 10 to 76 ms once 300 000 events sat in
            # another topic), which would measure the phases before, not the engine.
            say(f"(d0) bare-consumer latency at {args.rate:,.0f} events/s")
            async with EmbeddedBroker(work / "broker-d0") as fresh:
                results.fetch_latency = await measure_fetch_latency(args, accounts, tariffs,
                                                                    fresh.bootstrap)
            say(f"(d) latency at {args.rate:,.0f} events/s for {args.seconds:.0f} s")
            # A server in service writes its WAL into segment files recycled at each
            # checkpoint; a cluster created minutes ago has none and creates each one
            # (zero-filled, fsynced) as it goes, stalling the commits behind it. The
            # phases before wrote enough WAL for a checkpoint to recycle.
            await pool.execute("CHECKPOINT")
            created_before = await wal_segments_created(pool)
            async with EmbeddedBroker(work / "broker-d") as fresh:
                results.latency, results.offered = await measure_latency(
                    args, accounts, tariffs, dsn, fresh.bootstrap, work)
            results.wal_segments_created = await wal_segments_created(pool) - created_before
            in_ledger = await ledger_count(pool, SOURCE_LATENCY)
            if in_ledger != results.latency["latency_n"]:
                raise RuntimeError(f"latency run: {in_ledger} events in the ledger, "
                                   f"{results.latency['latency_n']} timed")
        finally:
            await pool.close()
    return results


async def measure_latency(args: argparse.Namespace, accounts: list[str],
                          tariffs: TariffStore, dsn: str, bootstrap: str,
                          work: Path) -> tuple[dict[str, Any], float]:
    topics = await create_topics(bootstrap, "bench.latency")
    config = {"dsn": dsn, "bootstrap": bootstrap, "group": "bench-latency", "target": None,
              "timeout_s": args.seconds + 120, "latency_source": SOURCE_LATENCY,
              "trace": str(work / "latency-trace.txt"), **topics}
    engine = await EngineProcess.start(config, work / "engine-latency.log")
    try:
        # Warm up: the load starts once the consumer holds its partitions and has
        # committed a batch, so the group join is not counted as latency.
        warmup = list(itertools.islice(traffic(accounts, tariffs, SOURCE_WARMUP, seed=4), 200))
        await asyncio.to_thread(publish_all, bootstrap, topics["topic"], warmup)
        await engine.expect("first-commit", timeout_s=60)
        await asyncio.sleep(1.0)
        sent, offered = await asyncio.to_thread(
            publish_paced, bootstrap, topics["topic"],
            traffic(accounts, tariffs, SOURCE_LATENCY, seed=5), args.rate, args.seconds)
        engine.send_target(len(warmup) + sent)
        stats = await engine.result(timeout_s=120)
    finally:
        await engine.close()
    if stats["latency_n"] != sent:
        raise RuntimeError(f"latency run: {stats['latency_n']} of {sent} events timed")
    return stats, offered


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
            traffic(accounts, tariffs, SOURCE_LATENCY, seed=7), args.rate, seconds))
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
    return {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99),
            "n": len(latencies)}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(args: argparse.Namespace, r: Results) -> None:
    e2e_rate = r.e2e["events"] / r.e2e["busy_s"]
    raw_ratio = e2e_rate / r.raw_debit
    naive_ratio = e2e_rate / r.naive
    p50_ms, p99_ms = r.latency["p50"] * 1000, r.latency["p99"] * 1000
    rss_mb = max(r.e2e["hwm_kb"], r.latency["hwm_kb"]) / 1024
    debit_share = r.e2e["debit_s"] / r.e2e["busy_s"]
    mean_batch = r.e2e["events"] / max(1, r.e2e["batches"])
    rows = [
        (f"(a1) raw batched debit: apply_usage, {DEBIT_BATCH:,} events/tx",
         f"{r.raw_debit:>11,.0f} ev/s"),
        ("(a2) raw Kafka fetch: aiokafka consumer", f"{r.raw_fetch:>11,.0f} msg/s"),
        (f"(b)  end to end: UsageConsumer, {r.e2e['events']:,} events",
         f"{e2e_rate:>11,.0f} ev/s"),
        ("       time in the debit transaction", f"{debit_share:>11.0%}"),
        ("       mean events per batch", f"{mean_batch:>11,.0f}"),
        ("       consumer start-up before first batch (excluded)",
         f"{r.e2e['startup_s']:>11.1f} s"),
        *[(f"       CPU per event: {name}" + (" (incl. start-up)" if name == "engine" else ""),
           f"{seconds / r.e2e['events'] * 1e6:>11.1f} us") for name, seconds in r.cpu.items()],
        (f"(c)  naive: one transaction per event, {args.naive_events:,} events",
         f"{r.naive:>11,.0f} ev/s"),
        ("     end to end / raw batched debit", f"{raw_ratio:>11.3f} x"),
        ("     end to end / naive", f"{naive_ratio:>11.1f} x"),
        (f"(d)  event time -> commit at {r.offered:,.0f} ev/s offered, p50", f"{p50_ms:>11.1f} ms"),
        (f"       p99 ({r.latency['latency_n']:,} events)", f"{p99_ms:>11.1f} ms"),
        ("       max", f"{r.latency['max'] * 1000:>11.1f} ms"),
        ("       of which in the engine (fetch returned -> offset committed), p50",
         f"{r.latency['held_p50'] * 1000:>11.1f} ms"),
        ("       of which in the engine, p99", f"{r.latency['held_p99'] * 1000:>11.1f} ms"),
        ("       WAL segment files created during the run",
         f"{r.wal_segments_created:>11,}"),
        ("(d0) same load, bare aiokafka consumer (no database), p50",
         f"{r.fetch_latency['p50'] * 1000:>11.1f} ms"),
        (f"       p99 ({r.fetch_latency['n']:,} events)",
         f"{r.fetch_latency['p99'] * 1000:>11.1f} ms"),
        ("(e)  engine peak RSS (VmHWM), max of (b) and (d)", f"{rss_mb:>11.0f} MB"),
    ]
    targets = [
        (f"end to end >= {TARGET_E2E_PER_S:,} ev/s", e2e_rate >= TARGET_E2E_PER_S),
        (f"end to end >= {TARGET_RAW_RATIO} x raw batched debit", raw_ratio >= TARGET_RAW_RATIO),
        (f"end to end >= {TARGET_NAIVE_RATIO:.0f} x naive", naive_ratio >= TARGET_NAIVE_RATIO),
        (f"p99 <= {TARGET_P99_MS:.0f} ms at {args.rate:,.0f} ev/s", p99_ms <= TARGET_P99_MS),
        (f"engine RSS <= {TARGET_RSS_MB:.0f} MB", rss_mb <= TARGET_RSS_MB),
    ]
    width = max(len(label) for label, _ in rows) + 2
    print(f"\nrating pipeline benchmark: {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {r.server},")
    tuning = Settings.from_env(os.environ)
    print(f"  {args.accounts:,} accounts on plan {PLAN!r}, {USAGE_PARTITIONS} partitions, "
          f"batch size {tuning.batch_max_events:,}, "
          f"fetch wait {tuning.fetch_max_wait_ms} ms")
    print("-" * (width + 16))
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    print("-" * (width + 16))
    for label, ok in targets:
        print(f"{label:<{width}}{verdict(ok):>11}")
    print(f"\n  (publish of the end-to-end events: {r.publish:,.0f} msg/s, librdkafka)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=300_000,
                        help="events for the end-to-end run (default 300 000)")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--debit-events", type=int, default=100_000,
                        help="events for the raw batched debit (default 100 000)")
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=5_000.0,
                        help="offered load of the latency run, events/s (default 5 000)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="duration of the latency run (default 20)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record the end-to-end engine with py-spy into this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--engine-child"]:
        return _engine_child(json.loads(argv[1]))
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    started = time.monotonic()
    try:
        results = asyncio.run(run(args, work))
    except Exception as exc:  # the benchmark failed: say why, exit non-zero
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"  (kept {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(args, results)
    print(f"  (whole run: {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What every part of the pipeline benchmark shares: services, accounts, load, helpers.

Imported by bench/bench_pipeline.py (the benchmark) and bench/pipeline_child.py (the
engine subprocess), and by bench/bench_reservations.py for its helpers; run neither
of these modules directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from consumers.usage_consumer import fetch_settings  # noqa: E402
from demo.simulator import TrafficGenerator, destinations_for  # noqa: E402
from engine.embedded import EmbeddedBroker, EmbeddedPostgres  # noqa: E402
from rating.core.events import decode_usage_event  # noqa: E402
from rating.core.rate import rate  # noqa: E402
from rating.settings import Settings  # noqa: E402
from rating.stores.ledger import RatedUsage  # noqa: E402
from rating.tariffbook.book import TariffStore  # noqa: E402

TARIFFS = REPO / "tariffs"
PLAN = "standard"
USAGE_PARTITIONS = 8  # as the engine creates usage.events (RATING_TOPIC_PARTITIONS)
# The raw debit writes batches of the engine's own batch size (RATING_BATCH_MAX_EVENTS).
DEBIT_BATCH = Settings.from_env(os.environ).batch_max_events

T = TypeVar("T")

SOURCE_RAW = "switch-bench-raw"
SOURCE_NAIVE = "switch-bench-naive"
SOURCE_E2E = "switch-bench-e2e"
SOURCE_WHOLE = "switch-bench-whole"
SOURCE_WHOLE_LATENCY = "switch-bench-whole-latency"
SOURCE_WARMUP = "switch-bench-warmup"
SOURCE_LATENCY = "switch-bench-latency"


def die_with_parent() -> None:
    """Runs in a forked child: SIGTERM when the benchmark dies, so nothing is left behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def say(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def run_in_workdir(prefix: str, keep: bool,
                   run: Callable[[Path], Coroutine[Any, Any, T]]) -> T | None:
    """``run(work)`` in a new temporary folder, removed afterwards unless ``keep``; None,
    having said why, when the benchmark failed."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return asyncio.run(run(work))
    except Exception as exc:  # the benchmark failed: say why, the caller exits non-zero
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    finally:
        if keep:
            print(f"  (kept {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def tree_cpu_s(pid: int | None) -> float:
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


def vm_hwm_kb(pid: int | str = "self") -> int:
    """Peak resident memory (VmHWM) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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


# Where each published event landed, and when it was sent: (partition, offset, Unix time).
Delivery = tuple[int, int, float]


def publish_paced(bootstrap: str, topic: str, events: Iterator[tuple[str, bytes]],
                  rate_per_s: float, duration_s: float,
                  deliveries: list[Delivery] | None = None,
                  acknowledged: list[float] | None = None) -> tuple[int, float]:
    """Publish at ``rate_per_s``, each event generated (and time-stamped) as it is sent;
    with ``deliveries``, record where each landed; with ``acknowledged``, how long the
    broker took to acknowledge each (seen within the 1 ms of the send loop)."""
    # librdkafka's defaults otherwise (linger.ms 5), as a voice switch would run it.
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                         "acks": "all"})
    failures: list[str] = []
    sent_at: dict[bytes, float] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        elif deliveries is not None or acknowledged is not None:
            sent = sent_at.pop(msg.value())
            if deliveries is not None:
                deliveries.append((msg.partition(), msg.offset(), sent))
            if acknowledged is not None:
                acknowledged.append(time.time() - sent)

    # Connected and holding the topic's metadata before the clock starts: otherwise the
    # first events wait for the connection and their latency is the producer's.
    producer.list_topics(topic, timeout=10)
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < duration_s:
        due = int(elapsed * rate_per_s) - sent
        for key, value in itertools.islice(events, max(0, due)):
            if deliveries is not None or acknowledged is not None:
                sent_at[value] = time.time()  # the event's own time, within microseconds
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


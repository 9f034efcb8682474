"""(w) The engine as users run it: ``rating-engine run``, a whole process (usage consumer,
outbox relay, recharge worker, tariff watcher, account API, metrics and all), timed from
outside only.

Events come from an independent producer (librdkafka, like a voice switch), and the
engine's progress is read the way any operator could: its consumer group's committed
offsets, polled with librdkafka every few milliseconds in a thread (OffsetFetch).

  (w1) throughput: the events already in the topic when the engine starts; events/s
       from its first committed offset to the last (the first batch's events are left
       out), and the time from the process's start to its first committed offset
       (Python start-up, migrations check, topics, tariff load, group join, first batch).
       Offsets are polled every THROUGHPUT_POLL_S: each poll is a broker request, and the
       broker shares the machine with the engine;
  (w2) latency at a fixed offered load: each event's time (stamped when it is sent)
       to the first poll that sees its offset committed. The poll interval bounds how
       late that is seen (LATENCY_POLL_S), so the figures are slightly pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, TopicPartition
from pipeline_common import (
    REPO,
    SOURCE_WARMUP,
    TARIFFS,
    USAGE_PARTITIONS,
    Delivery,
    create_topics,
    die_with_parent,
    percentile,
    publish_all,
    publish_paced,
    traffic,
    vm_hwm_kb,
)

from rating.tariffbook.book import TariffStore

THROUGHPUT_POLL_S = 0.025
LATENCY_POLL_S = 0.005


class CommitWatcher:
    """A consumer group's committed offsets over time, polled in a thread."""

    def __init__(self, bootstrap: str, group: str, topic: str, poll_s: float,
                 partitions: int = USAGE_PARTITIONS) -> None:
        self._poll_s = poll_s
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False})
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-watcher", daemon=True)
        # Per partition: committed offsets as first seen, and when (Unix time).
        self.offsets: list[list[int]] = [[] for _ in range(partitions)]
        self.seen_at: list[list[float]] = [[] for _ in range(partitions)]
        self.total = 0
        self.first_commit_at: float | None = None
        self.total_at_first = 0
        self.error: str | None = None

    def __enter__(self) -> CommitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                committed = self._consumer.committed(self._partitions, timeout=10)
            except Exception as exc:  # the broker is busy or restarting: poll again
                self.error = str(exc)
                continue
            now = time.time()
            total = 0
            for p, tp in enumerate(committed):
                offset = max(0, tp.offset)
                total += offset
                if not self.offsets[p] or offset > self.offsets[p][-1]:
                    self.offsets[p].append(offset)
                    self.seen_at[p].append(now)
            if total and self.first_commit_at is None:
                self.first_commit_at, self.total_at_first = now, total
            self.total = total
            self._stop.wait(max(0.0, self._poll_s - (time.monotonic() - started)))

    def committed_at(self, partition: int, offset: int) -> float | None:
        """When the record at ``offset`` was first seen committed (offset past it)."""
        index = bisect.bisect_right(self.offsets[partition], offset)
        return self.seen_at[partition][index] if index < len(self.seen_at[partition]) else None

    async def wait_for(self, total: int, timeout_s: float, engine: WholeEngine) -> float:
        deadline = time.monotonic() + timeout_s
        while self.total < total:
            if engine.proc.poll() is not None:
                raise engine.failure(f"engine exited with code {engine.proc.returncode}")
            if time.monotonic() > deadline:
                raise engine.failure(f"only {self.total:,} of {total:,} events committed "
                                     f"within {timeout_s:.0f} s ({self.error or 'no error'})")
            await asyncio.sleep(0.002)
        return time.time()


@dataclass
class WholeEngine:
    """``rating-engine run`` in a subprocess, configured like a user would."""

    proc: subprocess.Popen[bytes]
    log: Path
    started_at: float
    stats: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, dsn: str, bootstrap: str, topics: dict[str, str], group: str,
              work: Path, name: str) -> WholeEngine:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RATING_") or k in _TUNING}
        env.update({
            "RATING_DATABASE_URL": dsn, "RATING_KAFKA_BOOTSTRAP": bootstrap,
            "RATING_TARIFFS_DIR": str(TARIFFS), "RATING_DATA_DIR": str(work / f"{name}-data"),
            "RATING_USAGE_TOPIC": topics["topic"], "RATING_DLQ_TOPIC": topics["dlq_topic"],
            "RATING_BALANCE_TOPIC": topics["balance_topic"],
            "RATING_CONSUMER_GROUP": group, "RATING_RECHARGE_GROUP": f"{group}-recharge",
            "RATING_METRICS_PORT": "0", "RATING_HTTP_PORT": "0",
            "RATING_HTTP_HOST": "127.0.0.1", "RATING_PAYMENT_SIMULATION": "succeed",
        })
        log = work / f"engine-{name}.log"
        with log.open("ab") as handle:
            started_at = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "commands.main", "run"], env=env,
                                    cwd=REPO, stdout=handle, stderr=handle,
                                    stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        return cls(proc, log, started_at)

    def failure(self, message: str) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return RuntimeError(f"rating-engine run: {message}\n--- engine log ---\n{tail}")

    def sample(self) -> None:
        """CPU seconds and peak RSS so far (before it is stopped)."""
        process = psutil.Process(self.proc.pid)
        times = process.cpu_times()
        self.stats = {"cpu_s": times.user + times.system,
                      "hwm_kb": float(vm_hwm_kb(self.proc.pid))}

    async def stop(self) -> None:
        """SIGTERM, as an orchestrator would; the engine must exit 0."""
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                self.sample()
            self.proc.terminate()
        try:
            code = await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise self.failure("did not stop within 60 s of SIGTERM") from None
        if code != 0:
            raise self.failure(f"exited with code {code} after SIGTERM")


# The variables that tune the engine pass through to it, as they would in production.
_TUNING = {"RATING_BATCH_MAX_EVENTS", "RATING_FETCH_MAX_WAIT_MS", "RATING_TARIFF_POLL_SECONDS"}


async def measure_whole_throughput(dsn: str, bootstrap: str, topics: dict[str, str],
                                   events: int, work: Path,
                                   profile: Path | None) -> dict[str, Any]:
    """(w1) on ``events`` already published to ``topics['topic']``."""
    group = "bench-whole"
    with CommitWatcher(bootstrap, group, topics["topic"], THROUGHPUT_POLL_S) as watcher:
        engine = WholeEngine.start(dsn, bootstrap, topics, group, work, "whole")
        spy = _py_spy(engine, profile)
        try:
            done_at = await watcher.wait_for(events, 300, engine)
            engine.sample()
        finally:
            await engine.stop()
            if spy is not None:
                spy.wait(30)
    assert watcher.first_commit_at is not None
    busy_s = done_at - watcher.first_commit_at
    return {"events": events, "events_per_s": (events - watcher.total_at_first) / busy_s,
            "first_commit_s": watcher.first_commit_at - engine.started_at,
            "busy_s": busy_s, **engine.stats}


def _py_spy(engine: WholeEngine, profile: Path | None) -> subprocess.Popen[bytes] | None:
    if profile is None:
        return None
    import shutil

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([py_spy, "record", "--nonblocking", "-r", "250", "-f", "raw",
                             "-o", str(profile), "-p", str(engine.proc.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure_whole_latency(args: argparse.Namespace, accounts: list[str],
                                tariffs: TariffStore, dsn: str, bootstrap: str,
                                work: Path, source: str) -> dict[str, Any]:
    """(w2) ``args.rate`` events/s for ``args.seconds`` into a running engine."""
    topics = await create_topics(bootstrap, "bench.whole-latency")
    group = "bench-whole-latency"
    deliveries: list[Delivery] = []
    with CommitWatcher(bootstrap, group, topics["topic"], LATENCY_POLL_S) as watcher:
        engine = WholeEngine.start(dsn, bootstrap, topics, group, work, "whole-latency")
        try:
            # The load starts once the engine has committed a first batch: the start-up
            # is (w1)'s figure, not latency.
            warmup = list(itertools.islice(traffic(accounts, tariffs, SOURCE_WARMUP, seed=8),
                                           200))
            await asyncio.to_thread(publish_all, bootstrap, topics["topic"], warmup)
            await watcher.wait_for(len(warmup), 120, engine)
            await asyncio.sleep(1.0)
            sent, offered = await asyncio.to_thread(
                publish_paced, bootstrap, topics["topic"],
                traffic(accounts, tariffs, source, seed=9), args.rate, args.seconds, deliveries)
            await watcher.wait_for(len(warmup) + sent, 120, engine)
            engine.sample()
        finally:
            await engine.stop()
    latencies = []
    for partition, offset, sent_at in deliveries:
        seen = watcher.committed_at(partition, offset)
        if seen is None:
            raise RuntimeError(f"whole-engine latency: offset {offset} of partition "
                               f"{partition} never seen committed")
        latencies.append(max(0.0, seen - sent_at))
    latencies.sort()
    return {"n": len(latencies), "offered": offered, "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99), "max": latencies[-1], **engine.stats}

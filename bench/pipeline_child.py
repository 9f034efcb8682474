"""The engine side of the pipeline benchmark's (b) and (d): a ``UsageConsumer`` alone,
in its own process, observed at its fetches and offset commits.

Started by bench/bench_pipeline.py as ``python bench/pipeline_child.py CONFIG_JSON``;
prints ``first-commit`` after its first offset commit, then one JSON line of results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from pipeline_common import TARIFFS, percentile, vm_hwm_kb

from rating.settings import Settings
from rating.stores.db import create_pool


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
    from consumers.usage_consumer import Polled, UsageConsumer
    from engine.assembly import load_tariff_store
    from engine.services import kafka_producer

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

        async def _poll(self) -> Polled:
            polled = await super()._poll()
            if polled.records:
                probe.fetched(polled.records)
            return polled

        async def _commit(self, polled: Polled) -> None:
            await super()._commit(polled)
            probe.batch_done(polled.records)

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
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "max": latencies[-1] if latencies else float("nan"),
        "held_p50": percentile(held, 0.50),
        "held_p99": percentile(held, 0.99),
        "hwm_kb": vm_hwm_kb(),
        "cpu_s": _own_cpu_s(),
    }), flush=True)
    return 0



def _own_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(asyncio.run(_engine_child_main(json.loads(sys.argv[1]))))

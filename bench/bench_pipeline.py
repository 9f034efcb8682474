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
  (e)  peak RSS (VmHWM) of the engine subprocesses of (b) and (d);
  (w1) the engine as users run it: ``rating-engine run`` as a whole process (API,
       relay, recharge worker, tariff watcher, metrics and all) on as many events,
       already in a topic of its own: events/s from its first committed offset to
       the last, and the time from the process's start to that first commit;
  (w2) the same process at the offered load of (d), on a fresh broker: event time to
       the offset commit, as seen from outside (bench/pipeline_whole.py).

For (b) it also reports the share of time inside the debit transaction and the CPU
seconds per event of the engine, PostgreSQL and the broker (where the 2 cores go).
``--profile FILE`` samples the (b) engine with py-spy (collapsed stacks).

How (b) and (d) are timed: the subprocess (bench/pipeline_child.py) runs a
``UsageConsumer`` subclass whose only additions are clocks at the return of a
non-empty fetch (``_poll``) and at the end of the offset commit (``_commit``), which
every batch passes through after its debit transaction and DLQ publish. (b) is
events / (last offset commit - first non-empty fetch), so the group join before the
first fetch is excluded (reported separately as start-up). Every event is then
checked in the ledger, in (w1) and (w2) too.

``--whole-only`` runs (a1), (w1) and (w2) alone: the engine as users run it, and the
raw debit it is compared with.

Prints a table and PASS/FAIL per target; exits 0 whatever the verdicts, non-zero
only when the benchmark itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pipeline_raw
from pipeline_common import (
    PLAN,
    SOURCE_E2E,
    SOURCE_LATENCY,
    SOURCE_NAIVE,
    SOURCE_RAW,
    SOURCE_WHOLE,
    SOURCE_WHOLE_LATENCY,
    TARIFFS,
    account_ids,
    create_topics,
    ledger_count,
    publish_all,
    rated,
    run_in_workdir,
    say,
    services,
    traffic,
    tree_cpu_s,
    wal_segments_created,
)
from pipeline_engine import EngineProcess, measure_latency
from pipeline_report import Results, report, report_whole
from pipeline_whole import measure_whole_latency, measure_whole_throughput

from engine.embedded import EmbeddedBroker, EmbeddedPostgres
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.db import create_pool
from rating.stores.migrations import migrate
from rating.tariffbook.book import TariffStore


@dataclass
class Bench:
    """One run's services, accounts and results, shared by its phases."""

    args: argparse.Namespace
    work: Path
    pool: asyncpg.Pool
    pg: EmbeddedPostgres
    kb: EmbeddedBroker
    accounts: list[str]
    tariffs: TariffStore
    results: Results


async def run(args: argparse.Namespace, work: Path) -> Results:
    tariffs = TariffStore(TARIFFS)
    async with services(work) as (pg, kb):
        pool = await create_pool(pg.dsn, max_size=4)
        try:
            b = Bench(args, work, pool, pg, kb, account_ids(args.accounts), tariffs, Results())
            await prepare(b)
            say(f"{len(b.accounts):,} accounts on plan {PLAN!r}; (a1) raw batched debit")
            raw = rated(traffic(b.accounts, tariffs, SOURCE_RAW, seed=2), args.debit_events,
                        tariffs)
            b.results.raw_debit = await pipeline_raw.measure_raw_debit(pool, raw)
            del raw
            if not args.whole_only:
                await bare_consumer(b)
            await whole_engine(b)
            if not args.whole_only:
                await latencies(b)
            await whole_latency(b)
        finally:
            await pool.close()
    return b.results


async def prepare(b: Bench) -> None:
    async with b.pool.acquire() as conn:
        await migrate(conn)
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
    b.results.server = (f"PostgreSQL {version} (fsync={fsync}, "
                        f"synchronous_commit={sync_commit})")
    if fsync != "on" or sync_commit != "on":
        raise RuntimeError(f"PostgreSQL is not durable: {b.results.server}")
    await AccountStore(b.pool).create_many(
        NewAccount(a, PLAN, "EUR", balance=1_000_000 * 1_000_000) for a in b.accounts)
    await b.pool.execute("ANALYZE accounts")


async def publish_events(b: Bench, prefix: str, source: str,
                         seed: int) -> tuple[dict[str, str], float]:
    """``--events`` events of ``source`` in new topics; returns the topics and msg/s."""
    say(f"publishing {b.args.events:,} events for {prefix}")
    events = list(itertools.islice(traffic(b.accounts, b.tariffs, source, seed=seed),
                                   b.args.events))
    topics = await create_topics(b.kb.bootstrap, prefix)
    started = time.perf_counter()
    await asyncio.to_thread(publish_all, b.kb.bootstrap, topics["topic"], events)
    return topics, len(events) / (time.perf_counter() - started)


async def check_ledger(b: Bench, source: str, expected: int, what: str) -> None:
    in_ledger = await ledger_count(b.pool, source)
    if in_ledger != expected:
        raise RuntimeError(f"{what}: {in_ledger} events in the ledger, {expected} expected")


async def bare_consumer(b: Bench) -> None:
    """(a2), (c) and (b): the UsageConsumer alone, in a subprocess."""
    args, r = b.args, b.results
    topics, r.publish = await publish_events(b, "bench.e2e", SOURCE_E2E, seed=1)
    say(f"published at {r.publish:,.0f}/s; (a2) raw fetch")
    r.raw_fetch = await pipeline_raw.measure_raw_fetch(b.kb.bootstrap, topics["topic"],
                                                       args.events)
    say("(c) naive: one transaction per event")
    naive = rated(traffic(b.accounts, b.tariffs, SOURCE_NAIVE, seed=3), args.naive_events,
                  b.tariffs)
    r.naive = await pipeline_raw.measure_naive(b.pool, naive)
    say("(b) end to end: UsageConsumer in a subprocess")
    config = {"dsn": b.pg.dsn, "bootstrap": b.kb.bootstrap, "group": "bench-e2e",
              "target": args.events, "timeout_s": 240, **topics}
    cpu_before = (tree_cpu_s(b.pg.pid), tree_cpu_s(b.kb.pid))
    engine = await EngineProcess.start(config, b.work / "engine-e2e.log", args.profile)
    try:
        r.e2e = await engine.result(timeout_s=250)
    finally:
        await engine.close()
    r.cpu = {"engine": r.e2e["cpu_s"], "postgres": tree_cpu_s(b.pg.pid) - cpu_before[0],
             "broker": tree_cpu_s(b.kb.pid) - cpu_before[1]}
    await check_ledger(b, SOURCE_E2E, args.events, "end to end")


async def whole_engine(b: Bench) -> None:
    """(w1): ``rating-engine run`` on as many events as (b), in topics of their own."""
    r = b.results
    topics, _rate = await publish_events(b, "bench.whole", SOURCE_WHOLE, seed=10)
    say("(w1) the whole engine: rating-engine run")
    cpu_before = (tree_cpu_s(b.pg.pid), tree_cpu_s(b.kb.pid))
    r.whole = await measure_whole_throughput(b.pg.dsn, b.kb.bootstrap, topics, b.args.events,
                                             b.work, b.args.whole_profile)
    r.whole_cpu = {"engine": r.whole["cpu_s"],
                   "postgres": tree_cpu_s(b.pg.pid) - cpu_before[0],
                   "broker": tree_cpu_s(b.kb.pid) - cpu_before[1]}
    await check_ledger(b, SOURCE_WHOLE, b.args.events, "whole engine")


async def latencies(b: Bench) -> None:
    """(d0) and (d), each on a broker of its own.

    The embedded broker keeps everything in memory and its fetches slow down with all
    it holds (a bare consumer's median went from 10 to 76 ms once 300 000 events sat in
    another topic), which would measure the phases before, not the engine.
    """
    args, r = b.args, b.results
    say(f"(d0) bare-consumer latency at {args.rate:,.0f} events/s")
    async with EmbeddedBroker(b.work / "broker-d0") as fresh:
        r.fetch_latency = await pipeline_raw.measure_fetch_latency(
            args, b.accounts, b.tariffs, fresh.bootstrap)
    say(f"(d) latency at {args.rate:,.0f} events/s for {args.seconds:.0f} s")
    # A server in service writes its WAL into segment files recycled at each
    # checkpoint; a cluster created minutes ago has none and creates each one
    # (zero-filled, fsynced) as it goes, stalling the commits behind it. The
    # phases before wrote enough WAL for a checkpoint to recycle.
    await b.pool.execute("CHECKPOINT")
    created_before = await wal_segments_created(b.pool)
    async with EmbeddedBroker(b.work / "broker-d") as fresh:
        r.latency, r.offered = await measure_latency(
            args, b.accounts, b.tariffs, b.pg.dsn, fresh.bootstrap, b.work)
    r.wal_segments_created = await wal_segments_created(b.pool) - created_before
    await check_ledger(b, SOURCE_LATENCY, r.latency["latency_n"], "latency run")


async def whole_latency(b: Bench) -> None:
    """(w2): the whole engine at the offered load of (d), on a broker of its own."""
    args = b.args
    say(f"(w2) whole engine at {args.rate:,.0f} events/s for {args.seconds:.0f} s")
    await b.pool.execute("CHECKPOINT")  # on recycled WAL segments, as (d)
    async with EmbeddedBroker(b.work / "broker-w") as fresh:
        b.results.whole_latency = await measure_whole_latency(
            args, b.accounts, b.tariffs, b.pg.dsn, fresh.bootstrap, b.work,
            SOURCE_WHOLE_LATENCY)
    await check_ledger(b, SOURCE_WHOLE_LATENCY, b.results.whole_latency["n"],
                       "whole-engine latency run")


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
    parser.add_argument("--whole-profile", type=Path, default=None,
                        help="record the (w1) engine process with py-spy into this file")
    parser.add_argument("--whole-only", action="store_true",
                        help="only (a1), (w1) and (w2): the whole engine and its reference")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results = run_in_workdir("bench-pipeline-", args.keep, lambda work: run(args, work))
    if results is None:
        return 1
    (report_whole if args.whole_only else report)(args, results)
    print(f"  (whole run: {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

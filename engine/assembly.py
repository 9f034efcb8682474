"""Assembles the running engine: services, consumers, relay, recharge worker, API, metrics.

``run`` uses the configured services (or embedded ones when none are configured);
``dev`` adds demo accounts and a simulated voice switch with a live status line.
Shutdown (SIGTERM or Ctrl-C): stop fetching, finish and commit the batch in
flight, stop the workers, then the embedded services; exit 0.

Start-up is ordered for the first committed offset: the ports are checked before
anything starts (one line naming the setting if one is taken), the tariff files
load in a thread while the services start, and the usage consumer starts joining its
group (which the broker holds for seconds) before anything else, and consumes as
soon as it has joined; migrations, the relay, the HTTP API and the recharge worker's
own join happen meanwhile. "rating engine running" is printed once both have joined.
A component that fails is restarted (engine/supervision.py): the process exits
only when asked to, or at start-up on a configuration it cannot run with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import start_http_server

from consumers.dlq_reader import find_in_dlq
from consumers.outbox_relay import OutboxRelay
from consumers.recharge_worker import RechargeWorker
from consumers.reservation_sweeper import ReservationSweeper
from consumers.tariff_watcher import TariffWatcher
from consumers.usage_consumer import UsageConsumer
from engine.loop_lag import watch_loop_lag
from engine.payments import announce_provider, configured_provider
from engine.quiet_logs import quiet_repeated_client_lines
from engine.services import (
    Endpoints,
    endpoints,
    ensure_topics,
    kafka_producer,
    migrate_database,
)
from engine.startup_checks import check_startable
from engine.supervision import (
    ShutdownDeadline,
    StoppedWhileStarting,
    check_listen,
    keep_running,
    listen_error,
    until_stopped,
)
from rating.payments.provider import PaymentProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore
from rating.stores.db import BoundedProbe, DatabaseProbe, connection, create_pool
from rating.stores.plans_in_use import plans_in_use
from rating.stores.recharges import RechargePolicy
from rating.stores.reservations import ReservationStore
from rating.stores.tariff_loads import report_tariff_load
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore
from rating.tariffbook.references import PlansInUse

log = logging.getLogger(__name__)


@dataclass
class Engine:
    settings: Settings
    endpoints: Endpoints
    pool: asyncpg.Pool  # the API's (Pools.api)
    background_pool: asyncpg.Pool  # the relay's, the recharge worker's, the sweeper's
    producer: AIOKafkaProducer
    tariffs: TariffStore
    consumer: UsageConsumer
    relay: OutboxRelay
    metrics_port: int
    database_probe: DatabaseProbe  # the API pool's, for /readyz
    broker_probe: BoundedProbe  # a metadata request of the usage consumer, for /readyz
    http_port: int = 0  # where the account API (and the billing page) listens, once started

    async def readiness(self) -> dict[str, bool]:
        # A failed probe means not ready; the reason is in the logs.
        database, kafka = await asyncio.gather(self.database_probe(), self.broker_probe())
        return {"database": database, "tariffs": self.tariffs.book is not None,
                "kafka": kafka and not self.consumer.stopping.is_set()}


def load_tariff_store(settings: Settings) -> TariffStore:
    store = TariffStore(settings.tariffs_dir)
    # A large deck is ~100 000 long-lived objects: keep them out of every full
    # garbage collection, which would otherwise rescan them all.
    gc.freeze()
    return store


# Called once the engine runs, before its tasks start (dev mode adds its demo here):
# returns more tasks to run beside the engine's own, cancelled at shutdown.
OnStarted = Callable[["Engine", contextlib.AsyncExitStack], Awaitable[list["asyncio.Task[None]"]]]


async def serve(settings: Settings, *, on_started: OnStarted | None = None,
                provider: PaymentProvider | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); return the exit status.

    ``provider`` replaces the one ``settings`` configure (tests hold theirs); with neither,
    the engine refuses to start before anything starts.
    """
    provider = provider or configured_provider(settings)  # none: refused before anything
    quiet_repeated_client_lines()
    check_startable(settings)
    check_listen(settings.http_host, settings.metrics_port, "RATING_METRICS_PORT")
    check_listen(settings.http_host, settings.http_port, "RATING_HTTP_PORT")
    loading = asyncio.create_task(asyncio.to_thread(TariffStore, settings.tariffs_dir))
    # The grace lets the batch in flight finish; the rest of the shutdown (leaving the
    # groups, closing the API, the pool and embedded servers) takes seconds more.
    deadline = ShutdownDeadline(settings.shutdown_grace_seconds + _CLOSING_S)
    stop = stop or asyncio.Event()
    # From here on a signal asks to stop, start-up included (engine/supervision.py).
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, deadline.signalled, stop)
    print("rating engine starting", file=sys.stderr, flush=True)
    try:
        async with endpoints(settings) as ends:
            pools = await _create_pools(ends.database_url)
            try:
                await ensure_topics(ends.kafka_bootstrap, {
                    settings.usage_topic: settings.topic_partitions, settings.dlq_topic: 1,
                    settings.balance_topic: settings.topic_partitions},
                    replication=settings.topic_replication)
                async with kafka_producer(ends.kafka_bootstrap) as producer:
                    tariffs = await loading
                    gc.freeze()  # see load_tariff_store
                    status = await _run_components(settings, ends, pools, producer, tariffs,
                                                   on_started, provider, stop)
            finally:
                await pools.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        deadline.cancel()
        if not loading.done():
            loading.cancel()
        with contextlib.suppress(BaseException):
            await loading  # a load that failed after another failure is not reported
    # Said once everything is closed, embedded servers included (an exception says its own).
    print("rating engine stopped cleanly" if status == 0 else
          "rating engine stopped: a component failed (see the errors above)",
          file=sys.stderr, flush=True)
    return status


async def _consume(consumer: UsageConsumer, joining: asyncio.Task[None],
                   migrated: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Consume once the group is joined (the broker takes seconds) and the schema ready."""
    await joining
    await migrated
    await keep_running("usage-consumer", consumer.run, stop)


async def _cancelled(tasks: list[asyncio.Task[Any]]) -> None:
    """Tasks of a start-up that failed or was stopped, or of a shutdown past its grace."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _start_metrics(settings: Settings) -> tuple[Any, int]:
    try:
        server, _thread = start_http_server(settings.metrics_port, addr=settings.http_host)
    except OSError as exc:
        raise listen_error(settings.http_host, settings.metrics_port, "RATING_METRICS_PORT",
                           exc) from None
    return server, int(server.server_port)


# How long the shutdown may take beyond the grace before the process ends anyway.
_CLOSING_S = 20


@dataclass(frozen=True)
class Pools:
    """The engine's PostgreSQL connections, in three pools so that no part can starve
    another: however many API requests wait in the database (a burst of reservations
    on one account, say), usage is billed and balance events are relayed meanwhile.
    17 connections per engine in all."""

    api: asyncpg.Pool  # the HTTP API and the billing page: 10
    background: asyncpg.Pool  # migrations, relay, recharge worker, sweeper, watcher: 4
    usage: asyncpg.Pool  # the usage consumer: a debit in flight, the next lookup, the DLQ: 3

    async def close(self) -> None:
        for pool in (self.usage, self.background, self.api):
            await pool.close()


async def _create_pools(dsn: str) -> Pools:
    made: list[asyncpg.Pool] = []
    try:
        for size in (10, 4, 3):  # Pools' fields, in order
            made.append(await create_pool(dsn, max_size=size))
    except BaseException:
        for pool in made:  # a later one can fail alone (max_connections reached)
            await pool.close()
        raise
    return Pools(*made)


async def _run_components(settings: Settings, ends: Endpoints, pools: Pools,
                          producer: AIOKafkaProducer, tariffs: TariffStore,
                          on_started: OnStarted | None, provider: PaymentProvider,
                          stop: asyncio.Event) -> int:
    async with contextlib.AsyncExitStack() as stack:
        try:
            return await _start_and_run(settings, ends, pools, producer, tariffs, on_started,
                                        provider, stop, stack)
        except StoppedWhileStarting:
            log.info("asked to stop while starting: stopping")
            return 0
    return 0  # pragma: no cover  (the exit stack never swallows exceptions)


async def _start_and_run(settings: Settings, ends: Endpoints, pools: Pools,
                         producer: AIOKafkaProducer, tariffs: TariffStore,
                         on_started: OnStarted | None, provider: PaymentProvider,
                         stop: asyncio.Event, stack: contextlib.AsyncExitStack) -> int:
    """Start every component (each step abandoned if asked to stop), run until asked to
    stop or one fails, then stop them; ``stack`` closes what was started."""
    # The consumer first: its group join is most of the time to the first commit,
    # and the rest starts meanwhile (migrations first: it consumes once they are done).
    pool = pools.background
    consumer = UsageConsumer(settings, ends.kafka_bootstrap, pools.usage, tariffs, producer)
    stack.push_async_callback(consumer.close)
    joining = asyncio.create_task(consumer.start())
    migrated = asyncio.create_task(migrate_database(pool))
    tasks = [asyncio.create_task(_consume(consumer, joining, migrated, stop),
                                 name="usage-consumer")]
    # Whatever still runs when the stack closes (a start-up that failed or was stopped,
    # or tasks past the grace) is cancelled and awaited before anything it uses closes;
    # ``tasks`` is the list itself, which grows as the components start.
    stack.push_async_callback(_cancelled, [joining, migrated])
    stack.push_async_callback(_cancelled, tasks)
    await until_stopped(migrated, stop)
    metrics_server, metrics_port = _start_metrics(settings)
    stack.callback(metrics_server.server_close)  # after shutdown (callbacks run last first)
    stack.callback(metrics_server.shutdown)
    watcher = TariffWatcher(tariffs, float(settings.tariff_poll_seconds),
                            plans_in_use=_plans_in_use(pool), report=_tariff_report(pool))
    stack.push_async_callback(watcher.close)
    await until_stopped(watcher.start(), stop)
    relay = OutboxRelay(pool, producer, settings.balance_topic,
                        retention_s=settings.outbox_retention_hours * 3600.0)
    tasks.append(asyncio.create_task(keep_running("outbox-relay", relay.run, stop),
                                     name="outbox-relay"))
    tasks.append(asyncio.create_task(watch_loop_lag(stop), name="loop-lag"))
    probe = DatabaseProbe(pools.api)
    stack.push_async_callback(probe.close)
    broker_probe = BoundedProbe(consumer.broker_answers)
    stack.push_async_callback(broker_probe.close)
    engine = Engine(settings, ends, pools.api, pool, producer, tariffs, consumer, relay,
                    metrics_port, probe, broker_probe)
    extras = await until_stopped(_start_extras(engine, stack, stop, provider), stop)
    engine.http_port = extras.http_port
    tasks += extras.tasks
    await until_stopped(joining, stop)  # "running" once both groups are joined
    _announce(engine, extras.http_port, provider)
    added = [] if on_started is None else await until_stopped(on_started(engine, stack),
                                                              stop)
    stopper: asyncio.Task[object] = asyncio.create_task(stop.wait())
    watched: list[asyncio.Task[object]] = [stopper, *tasks, *added]
    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and t.exception() is not None]
    log.info("shutting down: finishing the batch in flight")
    stop.set()
    consumer.request_stop()
    relay.request_stop()
    for request_stop in extras.stoppers:
        request_stop()
    for task in added:
        task.cancel()
    await asyncio.wait(tasks + added, timeout=settings.shutdown_grace_seconds)
    for task in tasks:
        task.cancel()
    for failure in failed:
        exc = failure.exception()
        log.error("%s failed: %s", failure.get_name(), exc, exc_info=exc)
    return 1 if failed else 0


def _tariff_report(pool: asyncpg.Pool) -> Callable[[str, str], Awaitable[None]]:
    instance = f"{socket.gethostname()}:{os.getpid()}"

    async def report(in_force: str, attempted: str) -> None:
        await report_tariff_load(pool, instance, in_force, attempted)

    return report


def _plans_in_use(pool: asyncpg.Pool) -> Callable[[], Awaitable[PlansInUse]]:
    async def query() -> PlansInUse:
        async with connection(pool) as conn:
            return await plans_in_use(conn)

    return query


@dataclass
class Extras:
    tasks: list[asyncio.Task[None]]
    stoppers: list[Callable[[], None]]
    http_port: int


async def _start_extras(engine: Engine, stack: contextlib.AsyncExitStack,
                        stop: asyncio.Event, provider: PaymentProvider) -> Extras:
    """The recharge worker and the HTTP API."""
    # Imported here: the HTTP stack takes a while to import, and the usage consumer
    # joins its group meanwhile.
    from api.accounts import HttpApi
    from api.reservations import ReservationApi

    store = AccountStore(engine.pool)
    policy = RechargePolicy(retry_delays_s=engine.settings.recharge_retry_seconds,
                            sweep_every_s=engine.settings.recharge_sweep_seconds)
    topups = TopupService(engine.pool, provider, policy)
    dlq_search = functools.partial(find_in_dlq, engine.endpoints.kafka_bootstrap,
                                   engine.settings.dlq_topic, pool=engine.pool)
    reservations = reservation_store(engine.pool, engine.settings)
    api = HttpApi(store=store, tariffs=engine.tariffs, topups=topups, settings=engine.settings,
                  readiness=engine.readiness, dlq_search=dlq_search,
                  reservations=ReservationApi(reservations, engine.tariffs))
    try:
        await api.start()
    except OSError as exc:
        raise listen_error(engine.settings.http_host, engine.settings.http_port,
                           "RATING_HTTP_PORT", exc) from None
    stack.push_async_callback(api.close)
    sweeper = ReservationSweeper(reservation_store(engine.background_pool, engine.settings))
    worker = RechargeWorker(engine.settings, engine.endpoints.kafka_bootstrap,
                            engine.background_pool,
                            provider, policy=policy)
    stack.push_async_callback(worker.close)
    await worker.start()  # joins its own group while the usage consumer joins its own
    task = asyncio.create_task(keep_running("recharge-worker", worker.run, stop),
                               name="recharge-worker")
    sweeping = asyncio.create_task(keep_running("reservation-sweeper", sweeper.run, stop),
                                   name="reservation-sweeper")
    return Extras(tasks=[task, sweeping], stoppers=[worker.request_stop, sweeper.request_stop],
                  http_port=api.port or 0)


def reservation_store(pool: asyncpg.Pool, settings: Settings) -> ReservationStore:
    return ReservationStore(pool, cap_seconds=settings.reservation_seconds,
                            grace_seconds=settings.reservation_grace_seconds)


def _announce(engine: Engine, http_port: int, provider: PaymentProvider) -> None:
    ends = engine.endpoints
    lines = [
        "rating engine running",
        f"  PostgreSQL     {ends.database_url.rpartition('@')[2]}"
        + ("  (embedded)" if engine.settings.database_url is None else ""),
        f"  Kafka          {ends.kafka_bootstrap}"
        + ("  (embedded)" if engine.settings.kafka_bootstrap is None else ""),
        f"  metrics        http://127.0.0.1:{engine.metrics_port}/metrics",
        f"  account API    http://127.0.0.1:{http_port}/v1/accounts/{{id}}"
        f"   (health: /healthz, /readyz)",
        f"  billing page   http://127.0.0.1:{http_port}/billing"
        "   (a customer's link: rating-engine accounts portal-link ID)",
        f"  tariffs        {engine.settings.tariffs_dir}",
        f"  payments       {announce_provider(engine.settings, provider)}",
        "  stop with Ctrl-C (or SIGTERM)",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)

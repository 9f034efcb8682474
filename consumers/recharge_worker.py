"""The recharge worker: ``balance.low`` from ``balance.events`` -> automatic recharge.

Offsets are committed only after the recharge row is written, and the row is
keyed by the event's id, so a redelivered or replayed ``balance.low`` never
charges a card twice. A tick (about once a second) sends due retries and settles
pending payments of recharges and one-time top-ups; every ``RechargePolicy.sweep_every_s``
the sweeper asks a recharge for each account left below its threshold with none coming
(a lost ``balance.low``, a recharge smaller than the deficit).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter, Gauge

from consumers import metrics
from consumers.kafka_batches import (
    FetcherStopped,
    Record,
    commit_past,
    poll_records,
    replace_client,
)
from consumers.retry import (
    StoppedWhileRetrying,
    retry_transient,
    sleep_unless,
    transient_dependency,
)
from rating.core.errors import InvalidEvent, describe
from rating.core.thresholds import LOW
from rating.payments.provider import PaymentProvider
from rating.settings import Settings
from rating.stores.recharge_sweep import disabled_accounts, unserved_accounts
from rating.stores.recharges import RechargeOutcome, RechargePolicy, RechargeService
from rating.stores.topups import TopupService

log = logging.getLogger(__name__)

RECHARGE_OUTCOMES = Counter(
    "rating_recharge_outcomes_total",
    "Automatic recharge steps, by outcome (succeeded, declined, failed, pending, duplicate...).",
    ["outcome"])
TOPUPS_SETTLED = Counter(
    "rating_topups_settled_total", "One-time top-ups settled after being left pending.")
RECHARGES_IN_FLIGHT = Gauge(
    "rating_recharges_in_flight",
    "Automatic recharges not settled yet (all accounts), by status.", ["status"])
RECHARGE_OLDEST_IN_FLIGHT = Gauge(
    "rating_recharge_oldest_in_flight_seconds",
    "Age of the oldest automatic recharge not settled yet; 0 when there is none.")
RECHARGE_ACCOUNTS_UNSERVED = Gauge(
    "rating_recharge_accounts_unserved",
    "Accounts with automatic recharge on, below their threshold, nothing in flight and under"
    " their daily limit, counted right after a sweep: should be 0.")
RECHARGE_ACCOUNTS_DISABLED = Gauge(
    "rating_recharge_accounts_disabled",
    "Accounts whose automatic recharge declines turned off (not turned on again), by reason"
    " (hard_decline, attempts_exhausted).", ["reason"])
BALANCE_EVENTS_SKIPPED = Counter(
    "rating_recharge_events_skipped_total",
    "Messages on the balance topic the recharge worker could not decode.")


def decode_balance_low(value: bytes | None) -> tuple[str, str] | None:
    """``(account_id, event_id)`` of a ``balance.low`` CloudEvent; None for other types.

    Raises ``InvalidEvent`` for bytes that are not a balance event.
    """
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}", code="invalid_json") from exc
    if not isinstance(event, dict):
        raise InvalidEvent("not a JSON object")
    type_ = event.get("type")
    if not isinstance(type_, str):
        raise InvalidEvent("missing type")
    if type_ != LOW:
        return None
    event_id = event.get("id")
    data = event.get("data")
    account_id = data.get("account_id") if isinstance(data, dict) else None
    if account_id is None:
        account_id = event.get("subject")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidEvent("balance.low without an id")
    if not isinstance(account_id, str) or not account_id:
        raise InvalidEvent("balance.low without an account id")
    return account_id, event_id


class RechargeWorker:
    """One member of the recharge consumer group; ``start``, ``run``, ``close``."""

    def __init__(self, settings: Settings, bootstrap: str, pool: asyncpg.Pool,
                 provider: PaymentProvider, *, policy: RechargePolicy | None = None,
                 tick_s: float = 1.0) -> None:
        self.recharges = RechargeService(pool, provider, policy)
        self._pool = pool
        self.topups = TopupService(pool, provider, policy)
        self._tick_s = tick_s
        self._next_sweep = 0.0  # event-loop time
        self._outage: str | None = None  # the dependency a tick last found out, if any
        self._settings = settings
        self._bootstrap = bootstrap
        self._consumer = self._new_client()
        self._client_stopped = False  # the Kafka client stopped fetching: a new one is due
        self.stopping = asyncio.Event()
        # Outcomes of the balance.low events this worker handled (also in metrics).
        self.handled: collections.Counter[str] = collections.Counter()
        self._starting = False
        self._started = False
        self._closed = False

    def _new_client(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            self._settings.balance_topic, bootstrap_servers=self._bootstrap,
            group_id=self._settings.recharge_group, enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The usage consumer's session (consumers/usage_batches.fetch_settings): a
            # killed replica's member is replaced after 6 s, not aiokafka's 10 s, and
            # the first join of a start-up is held for less.
            session_timeout_ms=6_000, heartbeat_interval_ms=2_000)

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("recharge worker is closed")
        self._starting = True  # a start cancelled half-way still needs its stop()
        await self._consumer.start()
        self._started = True

    def request_stop(self) -> None:
        """Stop fetching; the message in hand is finished and committed."""
        self.stopping.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        if self._starting:
            await self._consumer.stop()

    async def __aenter__(self) -> RechargeWorker:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def run(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("recharge worker is not started")
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while not self.stopping.is_set():
            records = await self._poll()
            if records:
                try:
                    await self._handle(records)
                except StoppedWhileRetrying as exc:
                    log.warning("stopping with %s uncommitted; it will be redelivered", exc)
                    return
                await self._commit(records)
            if loop.time() >= next_tick and not self.stopping.is_set():
                await self.tick()
                next_tick = loop.time() + self._tick_s

    async def tick(self) -> None:
        """Due retries, then pending settlements; a failure is logged, never raised."""
        steps: Sequence[tuple[str, Callable[[], Awaitable[object]]]] = (
            ("recharge retries", self._run_due),
            ("recharge settlement", self._settle_recharges),
            ("top-up settlement", self._settle_topups),
            ("recharges in flight", self._report_in_flight),
            ("recharge sweep", self._sweep),
        )
        for what, step in steps:
            try:
                await step()
            except Exception as exc:
                dependency = transient_dependency(exc)
                if dependency is None:
                    log.exception("%s failed", what)
                    continue
                metrics.TRANSIENT_ERRORS.labels(dependency).inc()
                # One line when an outage starts and one when it ends, not one per step
                # and tick; the steps after this one need the same dependency.
                if self._outage is None:
                    log.warning("%s failed (%s); the recharge worker tries again every"
                                " tick, and says when %s answers again", what,
                                describe(exc), dependency)
                self._outage = dependency
                return
        if self._outage is not None:
            log.warning("recharge worker: %s answers again", self._outage)
            self._outage = None

    async def _run_due(self) -> None:
        for outcome in await self.recharges.run_due():
            RECHARGE_OUTCOMES.labels(outcome).inc()

    async def _settle_recharges(self) -> None:
        for outcome in await self.recharges.settle_pending():
            RECHARGE_OUTCOMES.labels(outcome).inc()

    async def _sweep(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.recharges.policy.sweep_every_s
        for outcome in await self.recharges.sweep():
            RECHARGE_OUTCOMES.labels(outcome).inc()
        RECHARGE_ACCOUNTS_UNSERVED.set(await unserved_accounts(self._pool))
        disabled = await disabled_accounts(self._pool)
        for reason in ("hard_decline", "attempts_exhausted"):
            RECHARGE_ACCOUNTS_DISABLED.labels(reason).set(disabled.get(reason, 0))

    async def _settle_topups(self) -> None:
        failures = self.topups.settle_failures
        TOPUPS_SETTLED.inc(await self.topups.settle_pending())
        metrics.TOPUP_SETTLE_FAILURES.inc(self.topups.settle_failures - failures)
        metrics.TOPUPS_FAILING.set(await self.topups.failing())

    async def _report_in_flight(self) -> None:
        in_flight = await self.recharges.in_flight()
        for status in ("requested", "charging", "pending"):
            RECHARGES_IN_FLIGHT.labels(status).set(in_flight.get(status, (0, 0.0))[0])
        RECHARGE_OLDEST_IN_FLIGHT.set(max((age for _, age in in_flight.values()), default=0.0))

    async def _poll(self) -> list[Record]:
        """What ``balance.events`` holds next. A client that stopped fetching is replaced
        here, so that the ticks (settlements, retries, the sweep) go on meanwhile."""
        if self._client_stopped:
            try:
                self._consumer = await replace_client(self._consumer, self._new_client)
                self._client_stopped = False
            except Exception as exc:  # a broker outage: tried again at the next poll
                log.warning("recharge worker: no new Kafka client yet (%s)", describe(exc))
                await sleep_unless(self.stopping, 1.0)
                return []
        try:
            return await poll_records(self._consumer, 100)
        except FetcherStopped as exc:
            metrics.COMPONENT_FAILURES.labels("recharge-worker").inc()
            log.error("recharge worker: %s; a new client joins the group", exc)
            self._client_stopped = True
            return []

    async def _handle(self, records: list[Record]) -> None:
        for record in records:
            try:
                decoded = decode_balance_low(record.value)
            except InvalidEvent as exc:
                BALANCE_EVENTS_SKIPPED.inc()
                log.warning("skipping undecodable message at %s[%d]@%d: %s", record.topic,
                            record.partition, record.offset, exc.message)
                continue
            if decoded is None:
                continue
            outcome = await self._on_balance_low(*decoded)
            self.handled[outcome] += 1
            RECHARGE_OUTCOMES.labels(outcome).inc()

    async def _on_balance_low(self, account_id: str, crossing_id: str) -> str:
        def react() -> Awaitable[RechargeOutcome]:
            return self.recharges.on_balance_low(account_id, crossing_id)

        try:
            return await retry_transient(react, what="recharge", stopping=self.stopping)
        except StoppedWhileRetrying:
            raise
        except Exception:
            # Not transient: a bug or bad data; the same input would fail again.
            log.exception("recharge for %s (crossing %s) failed", account_id, crossing_id)
            return "error"

    async def _commit(self, records: list[Record]) -> None:
        # A refused commit redelivers balance.low events; recharges are keyed by crossing.
        await commit_past(self._consumer, records)

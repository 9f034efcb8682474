"""The reservation sweeper: closes reservations past ``expires_at`` and frees their credit.

A switch that vanishes mid-call (crash, network cut) never releases its reservations
nor sends their final usage events; without a sweep their holds would keep that credit
from every other call of the account for ever. One periodic sweep closes them all (no
per-call timer), an account at a time under its row lock, and refreshes the gauges of
what open reservations hold. Several replicas may sweep at once: each reservation is
closed once, by whichever locks its account first. A late usage event of an expired
reservation is still billed (the call happened); only the hold is gone.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter, Gauge

from consumers import metrics
from consumers.retry import Backoff, sleep_unless, transient_dependency
from rating.core.errors import describe
from rating.stores.reservations import ReservationStore

log = logging.getLogger(__name__)

RESERVATIONS_OPEN = Gauge(
    "rating_reservations_open",
    "Open credit reservations, all accounts (every replica reports the same total).")
RESERVATIONS_HELD = Gauge(
    "rating_reservations_held_amount",
    "Credit held by open reservations, in currency units (same total in every replica).",
    ["currency"])
RESERVATIONS_EXPIRED = Counter(
    "rating_reservations_expired_total",
    "Reservations closed by the sweeper: neither extended nor used before expires_at.")
RESERVATION_SWEEP_FAILURES = Counter(
    "rating_reservation_sweep_failures_total",
    "Sweeps (or one account's part of a sweep) that failed other than by an outage.")

_ACCOUNTS_PER_SWEEP = 500


class ReservationSweeper:
    """Every ``interval_s``: expire what is due, then refresh the gauges."""

    def __init__(self, store: ReservationStore, *, interval_s: float = 1.0) -> None:
        self._store = store
        self._interval_s = interval_s
        self._currencies: set[str] = set()
        self.stopping = asyncio.Event()

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        backoff = Backoff(min(self._interval_s, 1.0), 30.0)
        while not self.stopping.is_set():
            try:
                await self.sweep_once()
                await self.refresh_gauges()
                backoff.reset()
            except Exception as exc:
                # Never fatal: billing goes on without the sweep; holds wait for the next.
                dependency = transient_dependency(exc)
                if dependency is None:
                    RESERVATION_SWEEP_FAILURES.inc()
                    log.exception("reservation sweep failed")
                else:
                    metrics.TRANSIENT_ERRORS.labels(dependency).inc()
                delay = await backoff.wait(self.stopping)
                log.warning("reservation sweep failed (%s); retried after %.1f s", describe(exc),
                            delay)
                continue
            await sleep_unless(self.stopping, self._interval_s)

    async def sweep_once(self) -> int:
        """Close every reservation due now; return how many."""
        total = 0
        while True:
            try:
                swept = await self._store.expire(accounts=_ACCOUNTS_PER_SWEEP)
            except Exception as exc:
                if transient_dependency(exc) is not None:
                    raise
                # One account's rows must not keep every other account's credit held:
                # sweep them one by one, and leave the failing one for a person.
                log.error("reservation sweep failed (%s); sweeping account by account",
                          describe(exc))
                return total + await self._sweep_each()
            expired = sum(e.expired for e in swept)
            RESERVATIONS_EXPIRED.inc(expired)
            total += expired
            if len(swept) < _ACCOUNTS_PER_SWEEP:
                return total

    async def _sweep_each(self) -> int:
        total = 0
        for account_id in await self._store.due_accounts(limit=_ACCOUNTS_PER_SWEEP):
            try:
                swept = await self._store.expire(accounts=1, only=account_id)
            except Exception as exc:
                if transient_dependency(exc) is not None:
                    raise
                RESERVATION_SWEEP_FAILURES.inc()
                log.error("expiring the reservations of account %r failed: %s",
                          account_id, exc)
                continue
            expired = sum(e.expired for e in swept)
            RESERVATIONS_EXPIRED.inc(expired)
            total += expired
        return total

    async def refresh_gauges(self) -> None:
        count, held = await self._store.open_totals()
        RESERVATIONS_OPEN.set(count)
        for currency in self._currencies - held.keys():
            RESERVATIONS_HELD.labels(currency).set(0)
        for currency, amount in held.items():
            RESERVATIONS_HELD.labels(currency).set(amount / 1_000_000)
        self._currencies |= held.keys()

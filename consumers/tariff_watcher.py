"""Hot reload of the tariff files: polls for changes and reloads on SIGHUP.

A bad edit is logged issue by issue and the previous book stays in force; the
metrics below let an alert fire when the files in place are not the ones in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType

from prometheus_client import Counter, Gauge

from consumers.retry import transient_dependency
from rating.core.errors import TariffIssue, describe
from rating.core.tariff import TariffBook
from rating.tariffbook.book import ReloadGuard, ReloadResult, TariffStore
from rating.tariffbook.references import PlansInUse, dropped_references

log = logging.getLogger(__name__)

# Which plans accounts are on, in which currencies (rating/stores/plans_in_use.py).
PlansInUseQuery = Callable[[], Awaitable[PlansInUse]]
# Tells the others which files are in force and which were last tried (their digests):
# `dlq replay` waits for a fix to be in force (rating/stores/tariff_loads.py).
LoadReport = Callable[[str, str], Awaitable[None]]

RELOADS = Counter(
    "rating_tariff_reload",
    "Tariff reload attempts by result (ok: new book in force; error: old book kept).",
    ["result"],
)
LAST_RELOAD_SUCCESS = Gauge(
    "rating_tariff_last_reload_success",
    "1 if the last tariff reload attempt succeeded, 0 if the files on disk are invalid.",
)
LAST_RELOAD_TIMESTAMP = Gauge(
    "rating_tariff_last_reload_timestamp_seconds",
    "Unix time at which the tariff book in force was loaded.",
)


class TariffWatcher:
    """Reloads ``store`` when its files change (every ``interval_s``) or on SIGHUP."""

    def __init__(self, store: TariffStore, interval_s: float = 2.0, *,
                 plans_in_use: PlansInUseQuery | None = None,
                 report: LoadReport | None = None) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._store = store
        self._plans_in_use = plans_in_use
        self._report = report
        self._report_failed = False
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._force = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._sighup = False
        self._closed = False

    async def start(self) -> None:
        """Start polling; the book the store already holds counts as loaded now."""
        if self._closed:
            raise RuntimeError("TariffWatcher is closed")
        if self._task is not None:
            return
        LAST_RELOAD_SUCCESS.set(1)
        LAST_RELOAD_TIMESTAMP.set(time.time())
        loop = asyncio.get_running_loop()
        # Windows has no SIGHUP and add_signal_handler only works in the main thread.
        with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        await self._report_load()
        self._task = asyncio.create_task(self._run(), name="tariff-watcher")

    async def close(self) -> None:
        """Stop polling and release SIGHUP; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._sighup:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> TariffWatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading tariffs")
        self._force = True
        self._wake.set()

    async def reload_now(self, *, force: bool = True) -> ReloadResult | None:
        """Reload (or only if changed, ``force=False``) and record the outcome."""
        async with self._lock:
            # A 100 000-row deck takes about a second to load: keep it off the loop.
            if not force and not await asyncio.to_thread(self._store.changed):
                return None
            guard = await self._guard()
            result: ReloadResult = await asyncio.to_thread(self._store.reload, guard)
        self._record(result)
        return result

    async def _guard(self) -> ReloadGuard | None:
        """What the new book must keep for the accounts (refused like an invalid file)."""
        if self._plans_in_use is None:
            return None
        in_use = await self._plans_in_use()  # a database outage: tried at the next poll

        def guard(current: TariffBook, new: TariffBook) -> list[TariffIssue]:
            return dropped_references(current, new, in_use, datetime.now(UTC))

        return guard

    async def _report_load(self) -> None:
        """Say which files are in force; a failure is logged once and tried next poll."""
        if self._report is None:
            return
        try:
            await self._report(*self._store.digests())
        except Exception as exc:
            if not self._report_failed:
                log.warning("cannot record which tariff files are in force (%s); dlq replay"
                            " will not wait for them; trying again at every poll",
                            describe(exc))
            self._report_failed = True
            return
        self._report_failed = False

    def _record(self, result: ReloadResult) -> None:
        if result.ok:
            RELOADS.labels(result="ok").inc()
            LAST_RELOAD_SUCCESS.set(1)
            LAST_RELOAD_TIMESTAMP.set(time.time())
            log.info("tariffs reloaded: %d plans", len(self._store.book))
            return
        RELOADS.labels(result="error").inc()
        LAST_RELOAD_SUCCESS.set(0)
        log.error(
            "tariff reload failed, keeping the previous tariffs: %d issues", len(result.issues)
        )
        for issue in result.issues:
            log.error("tariff issue: %s", issue)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            force, self._force = self._force, False
            try:
                await self.reload_now(force=force)
                await self._report_load()
            except Exception as exc:
                if transient_dependency(exc) is not None:  # the accounts check's database
                    log.warning("tariff reload postponed: cannot check the plans in use "
                                "(%s); trying again in %.1f s", exc, self._interval_s)
                    self._force = self._force or force
                    continue
                # The watcher must outlive a surprise (e.g. a permission change); the
                # engine keeps rating with the book it has, and says the files in place
                # are not the ones in use, as for an invalid file.
                RELOADS.labels(result="error").inc()
                LAST_RELOAD_SUCCESS.set(0)
                log.exception("tariff reload crashed; retrying in %.1f s", self._interval_s)

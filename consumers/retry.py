"""Retrying transient failures: back off, never skip, give up only when asked to stop.

``transient_dependency`` is where a failure is classified as an outage of Kafka or
PostgreSQL (rating/stores/db.py classifies the database's); everything else is the
work's own fault, and the caller isolates it rather than retrying it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)

from consumers.metrics import TRANSIENT_ERRORS
from rating.core.errors import describe
from rating.stores.db import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


class Backoff:
    """Exponential back-off with jitter, the one every retrying loop uses.

    Each step doubles up to ``max_s``; the wait is drawn between half and all of the
    step, so replicas that met one outage together do not retry it in lockstep.
    """

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError("Backoff needs 0 < first_s <= max_s")
        self._first_s = first_s
        self._max_s = max_s
        self._step_s = first_s

    def reset(self) -> None:
        self._step_s = self._first_s

    def next_delay(self) -> float:
        delay = self._step_s * random.uniform(0.5, 1.0)
        self._step_s = min(self._step_s * 2, self._max_s)
        return delay

    async def wait(self, stopping: asyncio.Event | None = None) -> float:
        """Sleep the next delay (less if ``stopping`` is set meanwhile); return it."""
        delay = self.next_delay()
        await sleep_unless(stopping, delay)
        return delay


async def sleep_unless(stopping: asyncio.Event | None, delay_s: float) -> None:
    """Sleep ``delay_s``, or until ``stopping`` is set."""
    if stopping is None:
        await asyncio.sleep(delay_s)
        return
    try:
        await asyncio.wait_for(stopping.wait(), delay_s)
    except TimeoutError:
        pass


class StoppedWhileRetrying(Exception):
    """Shutdown was requested while a dependency was still failing; nothing was committed."""


# Kafka errors that are the record's fault, not the broker's: sending the same record
# again fails the same way. Every other KafkaError (connection, timeout, leader moved,
# even KafkaTimeoutError, which aiokafka does not mark retriable) is an outage.
RECORD_ERRORS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError,
    CorruptRecordException, InvalidTimestampError, UnsupportedForMessageFormatError)


def transient_dependency(exc: BaseException) -> str | None:
    """Which dependency a transient failure came from, or None if it is not transient."""
    if isinstance(exc, KafkaError):
        return None if isinstance(exc, RECORD_ERRORS) else "kafka"
    if is_transient(exc):
        return "postgresql"
    return None


async def retry_transient(op: Callable[[], Awaitable[T]], *, what: str,
                          stopping: asyncio.Event, first_delay_s: float = 0.1,
                          max_delay_s: float = 5.0) -> T:
    backoff = Backoff(first_delay_s, max_delay_s)
    while True:
        try:
            return await op()
        except Exception as exc:
            dependency = transient_dependency(exc)
            if dependency is None:
                raise
            TRANSIENT_ERRORS.labels(dependency).inc()
            log.warning("%s failed (%s); retrying", what, describe(exc))
        if stopping.is_set():
            raise StoppedWhileRetrying(what)
        await backoff.wait(stopping)

"""Retrying transient failures: back off, never skip, give up only when asked to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError

from consumers.metrics import TRANSIENT_ERRORS
from rating.db import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoppedWhileRetrying(Exception):
    """Shutdown was requested while a dependency was still failing; nothing was committed."""


def transient_dependency(exc: BaseException) -> str | None:
    """Which dependency a transient failure came from, or None if it is not transient."""
    if isinstance(exc, KafkaError):
        return "kafka"
    if is_transient(exc):
        return "postgresql"
    return None


async def retry_transient(op: Callable[[], Awaitable[T]], *, what: str,
                          stopping: asyncio.Event, first_delay_s: float = 0.1,
                          max_delay_s: float = 5.0) -> T:
    delay = first_delay_s
    while True:
        try:
            return await op()
        except Exception as exc:
            dependency = transient_dependency(exc)
            if dependency is None:
                raise
            TRANSIENT_ERRORS.labels(dependency).inc()
            log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__,
                        exc, delay)
        if stopping.is_set():
            raise StoppedWhileRetrying(what)
        try:
            await asyncio.wait_for(stopping.wait(), delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, max_delay_s)

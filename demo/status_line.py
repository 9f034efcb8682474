"""The ``make run`` status line: what the engine did in the last interval, and in total.

On a terminal it is one line rewritten in place (log lines clear it first, so they
never run into it); otherwise (a pipe, a file, CI) a plain line per interval. The
README has a legend of its fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TextIO

from prometheus_client import REGISTRY

_CLEAR = "\r\x1b[K"  # back to the start of the line, erase it


def total(name: str) -> float:
    """Sum of a counter over all its label sets."""
    found = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == name:
                found += sample.value
    return found


def published(event_type: str) -> float:
    return REGISTRY.get_sample_value("rating_balance_events_published_total",
                                     {"type": event_type}) or 0.0


class StatusLine:
    """Writes the line in place on a terminal, as plain lines elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.in_place = stream.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        if self.in_place:
            self._stream.write(_CLEAR + text)
            self._shown = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def clear(self) -> None:
        """Erase the line in place, so that whatever is written next starts clean."""
        if self._shown:
            self._stream.write(_CLEAR)
            self._stream.flush()
            self._shown = False

    def filter(self, _record: logging.LogRecord) -> bool:
        """A logging filter: clears the line before any log line is written."""
        self.clear()
        return True


def describe(rate: float, paused: int | None, extra: str | None = None) -> str:
    text = (f"{rate:8.0f} events/s | applied {total('rating_events_applied_total'):,.0f}"
            f" | duplicates {total('rating_events_duplicate_total'):,.0f}"
            f" | DLQ {total('rating_events_dlq_total'):,.0f}"
            f" | balance.low {published('balance.low'):,.0f}"
            f" | exhausted {published('balance.exhausted'):,.0f}"
            f" | top-ups {published('topup.credited'):,.0f}")
    text = text if paused is None else f"{text} | paused {paused:,}"
    return text if extra is None else f"{text} | {extra}"


async def run_status_line(stream: TextIO, paused: Callable[[], int] | None = None,
                          interval_s: float = 2.0,
                          extra: Callable[[], str] | None = None) -> None:
    """Every ``interval_s``: events billed per second since the last line, then totals."""
    line = StatusLine(stream)
    handlers = logging.getLogger().handlers
    if line.in_place:
        for handler in handlers:
            handler.addFilter(line.filter)
    last_applied, last_time = total("rating_events_applied_total"), time.monotonic()
    try:
        while True:
            await asyncio.sleep(interval_s)
            applied, now = total("rating_events_applied_total"), time.monotonic()
            rate = (applied - last_applied) / (now - last_time)
            last_applied, last_time = applied, now
            line.show(describe(rate, None if paused is None else paused(),
                               None if extra is None else extra()))
    finally:
        line.clear()
        for handler in handlers:
            handler.removeFilter(line.filter)

"""During an outage the Kafka and PostgreSQL clients log the same failure many times a
second; each distinct line is let through once per interval (the engine's own lines
say what it does about the outage, and the metrics count every retry)."""

from __future__ import annotations

import logging
import re
import time

from rating.core.errors import describe

_NUMBERS = re.compile(r"\d+")


class RepeatedLines(logging.Filter):
    """Drops a client library's record when one like it (numbers aside) passed recently."""

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka", "asyncpg"),
                 interval_s: float = 30.0) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval_s = interval_s
        self._last: dict[tuple[str, int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.levelno, _NUMBERS.sub("N", str(record.msg)))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            return False
        if len(self._last) > 1000:  # a bound, should messages vary without end
            self._last.clear()
        self._last[key] = now
        if record.levelno <= logging.WARNING and record.exc_info and record.exc_info[1]:
            # A client's warning about an outage (asyncpg's "Failed to restore the pool
            # connection floor") comes with a whole traceback: its cause, in one line.
            record.msg = f"{record.getMessage()} ({describe(record.exc_info[1])})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_repeated_client_lines() -> None:
    """Install ``RepeatedLines`` on the root logger's handlers (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatedLines) for f in handler.filters):
            handler.addFilter(RepeatedLines())

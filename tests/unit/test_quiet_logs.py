"""An outage's flood of identical client-library lines is thinned to one per interval."""

from __future__ import annotations

import logging
import sys

from engine.quiet_logs import RepeatedLines


def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_the_same_client_line_passes_once_per_interval_and_the_engines_always() -> None:
    quiet = RepeatedLines(interval_s=60)
    assert quiet.filter(record("aiokafka", "Unable connect to node with id 111: port 5101"))
    assert not quiet.filter(record("aiokafka", "Unable connect to node with id 111: port 5102"))
    assert quiet.filter(record("aiokafka", "Unable to update metadata from [111]"))
    assert quiet.filter(record("aiokafka.consumer.fetcher", "Unable connect to node 1"))
    for _ in range(3):
        assert quiet.filter(record("consumers.retry", "debit transaction failed; retrying"))


def test_a_clients_outage_warning_is_one_line_naming_its_cause() -> None:
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except ConnectionRefusedError:
        record = logging.LogRecord("asyncpg.pool", logging.WARNING, "pool.py", 571,
                                   "Failed to restore the pool connection floor; retrying",
                                   None, sys.exc_info())
    assert RepeatedLines().filter(record) is True
    assert record.exc_info is None
    assert record.getMessage() == ("Failed to restore the pool connection floor; retrying"
                                   " (ConnectionRefusedError: [Errno 111] Connect call failed)")

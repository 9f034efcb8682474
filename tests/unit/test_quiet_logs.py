"""An outage's flood of identical client-library lines is thinned to one per interval."""

from __future__ import annotations

import logging

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

"""RFC 3339 timestamps as usage events carry them (``time``, ``data.started_at``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_RFC3339_RE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime:
    """``text`` as an aware UTC time; ``ValueError`` naming the field ``time`` if it is not
    an RFC 3339 timestamp with an offset."""
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"time: not an RFC 3339 timestamp: {text!r}")
    whole, fraction, zone = match.groups()
    try:
        parsed = _whole_second(whole, zone)
    except ValueError as exc:
        raise ValueError(f"time: {exc}: {text!r}") from exc
    if fraction:  # to the microsecond, cut as datetime.fromisoformat cuts it
        micros = int(fraction[:6].ljust(6, "0"))
        if micros:
            parsed += timedelta(microseconds=micros)
    return parsed


@lru_cache(maxsize=4096)
def _whole_second(whole: str, zone: str) -> datetime:
    # Switches stamp events to the millisecond or microsecond, so whole timestamps
    # rarely repeat; the events of one batch share few distinct seconds, hence the cache.
    return datetime.fromisoformat((whole + zone).upper()).astimezone(UTC)

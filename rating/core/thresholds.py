"""Which balance events a balance change announces (CONTRACT §5), as a pure rule."""

from __future__ import annotations

LOW = "balance.low"
EXHAUSTED = "balance.exhausted"
RECOVERED = "balance.recovered"


def balance_crossings(before: int, after: int, threshold: int) -> list[str]:
    """Event types for one change of balance from ``before`` to ``after`` (micro-units).

    Each is announced once per crossing: staying below the threshold, or staying
    at or under zero, announces nothing more.
    """
    events: list[str] = []
    if after < before:
        if before >= threshold > after:
            events.append(LOW)
        if before > 0 >= after:
            events.append(EXHAUSTED)
    elif after > before and before < threshold <= after:
        events.append(RECOVERED)
    return events

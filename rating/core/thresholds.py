"""Which balance events a balance change announces (CONTRACT §5), as a pure rule."""

from __future__ import annotations

from collections.abc import Iterable

from rating.core.money import BALANCE_BOUND

LOW = "balance.low"
EXHAUSTED = "balance.exhausted"
RECOVERED = "balance.recovered"
ALERT = "balance.alert"

# Notification thresholds an account may have besides its low-balance threshold.
MAX_ALERT_THRESHOLDS = 10


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


def alert_crossings(before: int, after: int, thresholds: Iterable[int]) -> list[int]:
    """The notification thresholds one change crosses downwards, highest first.

    The same rule as ``balance.low``: from at-or-above to below, so each is announced
    once per crossing, and again only after the balance has risen back to it.
    """
    if after >= before:
        return []
    return sorted((t for t in thresholds if before >= t > after), reverse=True)


def alert_thresholds(values: Iterable[int]) -> tuple[int, ...]:
    """Notification thresholds as stored: distinct, highest first; ``ValueError`` if unusable."""
    found = sorted(set(values), reverse=True)
    if len(found) > MAX_ALERT_THRESHOLDS:
        raise ValueError(f"at most {MAX_ALERT_THRESHOLDS} alert thresholds")
    for value in found:
        if not 0 <= value <= BALANCE_BOUND:
            raise ValueError("an alert threshold must be 0 or more, within the balance bound")
    return tuple(found)

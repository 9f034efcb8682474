"""The grant rule of credit reservations (contract §10), pure and in integer micro-units.

A reservation that has ``granted`` seconds and ``used`` micro-units of settled charges
holds ``hold(granted, used) = max(0, cost(granted) - used)``: whole increments, the
first block and the connect fee included (``cost`` of §4). A grant raises ``granted``
by at most ``cap`` seconds, and only as far as the account's available credit
(``balance - sum of holds``) pays for the growth of the hold, so concurrent calls are
together never granted more than the credit. PostgreSQL runs the same rule
(``reservation_grant`` in ``rating/stores/sql/0007_reservations.sql``) under the
account's row lock; a test runs both on the same values.
"""

from __future__ import annotations

from rating.core.pricing import TimedRate, cost, seconds_covered


def hold(granted: int, used: int, rate: TimedRate) -> int:
    """Credit held by an open reservation of ``granted`` seconds with ``used`` settled."""
    return max(0, cost(granted, rate) - used)


def grant_total(*, available: int, granted: int, used: int, cap: int, rate: TimedRate) -> int:
    """Total seconds granted after one more grant; ``granted`` when nothing more can be.

    ``available`` is the account's balance minus every open hold (this one's included).
    The result ``t`` satisfies ``granted <= t <= granted + cap`` and
    ``hold(t, used) - hold(granted, used) <= available``, and is an increment boundary
    (unless the cap is shorter than the increment it ends in); nothing is granted while
    ``available`` is negative.
    """
    if available < 0 or cap < 1:
        return granted
    # cost(t) <= budget is exactly "the hold grows by at most available".
    budget = available + hold(granted, used, rate) + used
    return max(granted, min(_whole_within(granted, cap, rate), seconds_covered(budget, rate)))


def _whole_within(granted: int, cap: int, rate: TimedRate) -> int:
    """The last increment boundary (first block, then whole steps) at most ``cap`` seconds
    past ``granted``: a grant covers whole increments. When the cap ends inside the next
    increment, with no boundary to stop at, the cap itself (that increment is held)."""
    first, step = rate.increment.first, rate.increment.step
    limit = granted + cap
    boundary = 0 if limit < first else first + (limit - first) // step * step
    return boundary if boundary > granted else limit

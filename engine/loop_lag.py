"""How late the engine's event loop runs what is due: the one measure of a busy engine.

The account API, the usage consumer, the relay and the workers share one event loop.
When it has more to do than it can (a replica past its capacity, CPU starved by its
neighbours), every await is resumed late: API answers and reservations slow down
though the database is fast. ``rating_event_loop_lag_seconds`` says so directly
(alert ``RatingEventLoopSaturated``), where CPU graphs only hint at it.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

LOOP_LAG = Histogram(
    "rating_event_loop_lag_seconds",
    "How late the engine's event loop resumed a timer that was due (sampled 4 times a second).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

_EVERY_S = 0.25


async def watch_loop_lag(stopping: asyncio.Event, every_s: float = _EVERY_S) -> None:
    """Observe the loop's lag every ``every_s`` until ``stopping`` is set."""
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        due = loop.time() + every_s
        await asyncio.sleep(every_s)
        LOOP_LAG.observe(max(0.0, loop.time() - due))

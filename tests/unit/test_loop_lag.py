"""The loop-lag metric sees a loop kept busy, and nothing when it is free."""

from __future__ import annotations

import asyncio
import time

from engine.loop_lag import LOOP_LAG, watch_loop_lag


def _observed() -> tuple[float, float]:
    """(count, sum) of the histogram so far."""
    samples = {s.name: s.value for m in LOOP_LAG.collect() for s in m.samples}
    return (samples["rating_event_loop_lag_seconds_count"],
            samples["rating_event_loop_lag_seconds_sum"])


async def test_a_blocked_loop_is_seen_late_and_a_free_one_on_time() -> None:
    stopping = asyncio.Event()
    count, total = _observed()
    watcher = asyncio.create_task(watch_loop_lag(stopping, every_s=0.05))
    await asyncio.sleep(0.3)  # free: each sample on time
    free_count, free_total = _observed()
    assert free_count - count >= 3
    assert (free_total - total) / (free_count - count) < 0.04
    await asyncio.sleep(0.01)
    time.sleep(0.4)  # a handler that hogs the loop
    await asyncio.sleep(0.12)
    busy_count, busy_total = _observed()
    assert busy_total - free_total >= 0.3  # the blocked stretch, less the sample's wait
    stopping.set()
    await asyncio.wait_for(watcher, 1)
    assert busy_count > free_count

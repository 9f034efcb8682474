"""/readyz's database probe answers within its deadline, even from a hung server."""

from __future__ import annotations

import asyncio
import time

from rating.stores.db import DatabaseProbe


class HangingPool:
    """A pool whose server neither answers nor refuses until ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.queries = 0
        self.fail = False

    async def fetchval(self, _sql: str) -> int:
        self.queries += 1
        await self.answer.wait()
        if self.fail:
            raise ConnectionResetError("gone")
        return 1


async def test_a_hung_server_is_down_within_the_deadline_with_one_query_in_flight() -> None:
    pool = HangingPool()
    probe = DatabaseProbe(pool, timeout_s=0.2)  # type: ignore[arg-type]
    started = time.monotonic()
    assert await probe() is False
    assert await probe() is False
    assert time.monotonic() - started < 1.0  # two deadlines, not the query's own timeout
    assert pool.queries == 1  # the hung query is waited on again, not piled up
    pool.answer.set()
    await asyncio.sleep(0)
    assert await probe() is True  # the server answers again: up
    pool.fail = True
    assert await probe() is False  # a refusal is down at once
    await probe.close()


async def test_close_ends_a_query_still_in_flight() -> None:
    pool = HangingPool()
    probe = DatabaseProbe(pool, timeout_s=0.05)  # type: ignore[arg-type]
    assert await probe() is False
    await probe.close()
    assert probe._query is not None and probe._query.cancelled()

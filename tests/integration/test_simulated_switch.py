"""The simulated voice switch with call control, against the real account API: it reserves,
publishes a minute at a time, extends, cuts the call where the credit ends, and does not
place a call the credit cannot cover."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from demo.call_control import ReservingSwitch
from demo.simulator import Call, Destinations, TrafficGenerator
from rating.core.money import parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from tests.integration.test_http_api import TOKEN, start_api
from tests.support import write_flat_tariffs

SWITCH_TOKEN = "switch-secret"
GB = "+442071234567"  # flat plan: 0.10 per minute, 60/60


@pytest.fixture
async def switch(settings: Settings, pool: asyncpg.Pool,
                 tmp_path: Path) -> AsyncIterator[ReservingSwitch]:
    configured = replace(settings, api_token=TOKEN, switch_token=SWITCH_TOKEN,
                         http_host="127.0.0.1", http_port=0, reservation_seconds=300)
    server = await start_api(configured, pool, write_flat_tariffs(tmp_path / "tariffs"),
                             SimulatedProvider(), {"postgresql": True})
    store = AccountStore(pool)
    await store.create(NewAccount("rich", "flat", "EUR", parse_amount("100.00")))
    await store.create(NewAccount("ten-minutes", "flat", "EUR", parse_amount("1.00")))
    await store.create(NewAccount("broke", "flat", "EUR", parse_amount("0.05")))
    traffic = TrafficGenerator(["rich"], Destinations((GB,), (GB,), ()), source="sim-sw")
    async with aiohttp.ClientSession() as http:
        yield ReservingSwitch(http, f"http://127.0.0.1:{server.port}", SWITCH_TOKEN, traffic)
    await server.close()


def intervals(events: list[tuple[str, bytes]]) -> list[tuple[int, int, bool]]:
    out = []
    for _account, raw in events:
        data = orjson.loads(raw)["data"]
        out.append((data["from_s"], data["to_s"], data["final"]))
    return out


def call(account: str, seconds: int, call_id: str) -> Call:
    return Call(account, "usage.call", {"call_id": call_id, "destination": GB}, seconds)


async def test_a_long_call_is_extended_and_cut_where_the_credit_ends(
        switch: ReservingSwitch, pool: asyncpg.Pool) -> None:
    events = await switch.place(call("ten-minutes", 700, "c-long"))
    # 300 s granted, extended to 600 (all the credit), then cut at 600 with final.
    assert intervals(events) == [(0, 60, False), (60, 120, False), (120, 180, False),
                                 (180, 240, False), (240, 300, False), (300, 360, False),
                                 (360, 420, False), (420, 480, False), (480, 540, False),
                                 (540, 600, True)]
    assert switch.stats.outcomes == {"reserved": 1, "extended": 1, "cut": 1}
    row = await pool.fetchrow("SELECT granted_seconds, status FROM reservations")
    assert (row["granted_seconds"], row["status"]) == (600, "open")  # until its final event


async def test_a_short_call_needs_no_extension_and_no_credit_no_call(
        switch: ReservingSwitch) -> None:
    events = await switch.place(call("rich", 75, "c-short"))
    assert intervals(events) == [(0, 60, False), (60, 75, True)]
    assert await switch.place(call("broke", 30, "c-refused")) == []
    assert switch.stats.outcomes == {"reserved": 1, "refused": 1}
    sms_or_call = await switch.session()
    assert sms_or_call  # whatever the generator drew next is published

"""Reservations settled by the real usage consumer: a voice switch reserves, publishes its
call's events to Kafka (librdkafka), extends, ends with final: true; redelivered events
change nothing, and calls without a reservation are billed as always."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from rating.core.money import parse_amount
from rating.core.pricing import Increment, TimedRate, cost
from rating.core.rate import call_rate_for
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.reservations import CallLeg, ReservationStore
from rating.tariffbook.book import TariffStore
from tests.support import (
    create_topics,
    ledger_explains_balances,
    publish_with_librdkafka,
    running_consumer,
    usage_event,
    wait_until,
    write_flat_tariffs,
)

GB = "+442071234567"  # flat plan: 0.10 per minute, 60/60
RATE = TimedRate(100_000, 0, Increment(60, 60))


@pytest.fixture
async def env(settings: Settings, tmp_path: Path, kafka_bootstrap: str) -> Settings:
    configured = replace(settings, tariffs_dir=write_flat_tariffs(tmp_path / "tariffs"),
                         batch_max_events=500)
    await create_topics(configured, kafka_bootstrap)
    return configured


def event(event_id: str, account: str, call_id: str, from_s: int, to_s: int,
          final: bool = False) -> tuple[str, bytes]:
    return account, usage_event("usage.call", event_id, account, {
        "call_id": call_id, "destination": GB, "from_s": from_s, "to_s": to_s,
        "final": final}, source="switch-eu-1")


async def state(pool: asyncpg.Pool, account: str) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT balance, held, open_reservations FROM accounts WHERE id = $1", account)
    return row["balance"], row["held"], row["open_reservations"]


async def applied(pool: asyncpg.Pool, *event_ids: str) -> bool:
    n = await pool.fetchval("SELECT count(*) FROM ledger WHERE event_id = ANY($1)",
                            list(event_ids))
    return bool(n == len(event_ids))


async def test_a_call_settles_through_the_consumer_and_redeliveries_change_nothing(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    for account in ("acct-1", "acct-2"):
        await AccountStore(pool).create(NewAccount(account, "flat", "EUR",
                                                   parse_amount("10.00")))
    store = ReservationStore(pool, cap_seconds=300, grace_seconds=60)
    book = TariffStore(env.tariffs_dir)
    r = (await store.reserve("acct-1", CallLeg("switch-eu-1", "c-1", "call", GB),
                             lambda plan: call_rate_for(book.book, plan, GB))).reservation
    assert await state(pool, "acct-1") == (10_000_000, cost(300, RATE), 1)

    async with running_consumer(env, pool, book):
        # Two minutes of the call, plus a call of another account with the same id.
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
            event("e1", "acct-1", "c-1", 0, 60), event("e2", "acct-1", "c-1", 60, 120),
            event("x1", "acct-2", "c-1", 0, 60, final=True)])
        await wait_until(lambda: applied(pool, "e1", "e2", "x1"), what="the first events")
        assert await state(pool, "acct-1") == (
            10_000_000 - cost(120, RATE), cost(300, RATE) - cost(120, RATE), 1)
        assert await state(pool, "acct-2") == (10_000_000 - cost(60, RATE), 0, 0)

        # The switch redelivers both events (a retry), then extends.
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
            event("e1", "acct-1", "c-1", 0, 60), event("e2", "acct-1", "c-1", 60, 120),
            event("s1", "acct-2", "c-2", 0, 30, final=True)])  # a marker behind them
        await wait_until(lambda: applied(pool, "s1"), what="the marker")
        assert await state(pool, "acct-1") == (
            10_000_000 - cost(120, RATE), cost(300, RATE) - cost(120, RATE), 1)
        extended = await store.extend("acct-1", r.reservation_id)
        assert extended.reservation.granted_seconds == 600

        # The rest of the call and its end: the hold is gone, the charges are cost(400 s).
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
            event("e3", "acct-1", "c-1", 120, 300),
            event("e4", "acct-1", "c-1", 300, 400, final=True)])
        await wait_until(lambda: applied(pool, "e3", "e4"), what="the end of the call")
        assert await state(pool, "acct-1") == (10_000_000 - cost(400, RATE), 0, 0)
        closed = await store.get("acct-1", r.reservation_id)
        assert closed.status == "final" and closed.used == cost(400, RATE)

        # The final event redelivered after the end: still nothing.
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
            event("e4", "acct-1", "c-1", 300, 400, final=True),
            event("s2", "acct-2", "c-3", 0, 30, final=True)])
        await wait_until(lambda: applied(pool, "s2"), what="the second marker")
    assert await state(pool, "acct-1") == (10_000_000 - cost(400, RATE), 0, 0)
    assert await ledger_explains_balances(pool) == []

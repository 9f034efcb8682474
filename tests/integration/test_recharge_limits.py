"""The daily limit of automatic recharge against real PostgreSQL and broker (CONTRACT §12):
at most ``max_per_day`` charges in any 24 hours, under a burst of crossings and two
concurrent workers, and one ``recharge.limited``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.outbox_relay import OutboxRelay
from consumers.recharge_worker import RechargeWorker
from rating.core.money import format_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore
from rating.stores.recharge_settings import set_max_per_day
from rating.stores.recharge_sweep import unserved_accounts
from rating.stores.recharges import RechargePolicy, RechargeService
from tests.payments_support import (
    EUR,
    FAST,
    balance,
    crossings,
    debit,
    events,
    make_account,
    recharges,
)
from tests.support import create_topics, ledger_explains_balances, wait_until

QUICK = RechargePolicy(retry_delays_s=(0.6,), answer_timeout_s=0.6, settle_poll_s=0.1,
                       sweep_every_s=0.2)


@contextlib.asynccontextmanager
async def two_workers(settings: Settings, kafka_bootstrap: str, pool: asyncpg.Pool,
                      provider: SimulatedProvider) -> AsyncIterator[list[RechargeWorker]]:
    """The outbox relay and two recharge workers of one group, each sweeping too."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    relay = OutboxRelay(pool, producer, settings.balance_topic, idle_poll_s=0.05)
    workers = [RechargeWorker(settings, kafka_bootstrap, pool, provider, policy=QUICK,
                              tick_s=0.1) for _ in range(2)]
    tasks = [asyncio.create_task(relay.run())]
    try:
        for worker in workers:
            await worker.start()
            tasks.append(asyncio.create_task(worker.run()))
        yield workers
    finally:
        relay.request_stop()
        for worker in workers:
            worker.request_stop()
        await asyncio.gather(*tasks)
        for worker in workers:
            await worker.close()
        await producer.stop()


async def cross_below(pool: asyncpg.Pool, account_id: str = "acct-1") -> None:
    """Top up above the threshold (5.00), then spend down to 1.00: one crossing."""
    store = AccountStore(pool)
    now = await balance(pool, account_id)
    if now < EUR("6.00"):
        n = await pool.fetchval("SELECT count(*) FROM ledger")
        await store.credit(account_id, kind="adjustment", source="adjustment",
                           key=f"{account_id}/up-{n}", amount=EUR("6.00") - now,
                           reason="test: back above the threshold")
    await debit(pool, account_id, format_amount(await balance(pool, account_id) - EUR("1.00")))


async def test_the_daily_limit_holds_under_a_burst_and_two_workers(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await create_topics(settings, kafka_bootstrap)
    await make_account(pool, balance="10.00", recharge="20.00", below="5.00")
    await set_max_per_day(pool, "acct-1", 3)
    provider = SimulatedProvider()

    async with two_workers(settings, kafka_bootstrap, pool, provider):
        for _ in range(12):  # a runaway: crossing after crossing, for seconds
            await cross_below(pool)
            await asyncio.sleep(0.15)

        async def settled() -> bool:
            rows = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
            busy = await pool.fetchval(
                "SELECT count(*) FROM recharges WHERE status IN ('requested', 'charging',"
                " 'pending')")
            return bool(rows and busy == 0 and len(provider.captured()) >= 3)

        await wait_until(settled, what="the burst handled")
        await asyncio.sleep(1.0)  # a few more sweeps and polls: nothing more may come

    assert len(await crossings(pool)) >= 6  # the limit was reached, and pushed against
    assert len(provider.captured()) == 3
    assert len(provider.payments) == 3
    assert [s for _, s in await recharges(pool)] == ["succeeded"] * 3
    [limited] = await events(pool, "recharge.limited")
    assert (limited["attempt"], limited["amount"], limited["max_per_day"]) == (
        1, "20.000000", 3)
    assert limited["recharges_in_24h"] == 3 and limited["next_allowed_at"] is not None
    # Below its threshold, and rightly unserved: the limit is not a sweeper's failure.
    assert await balance(pool) < EUR("5.00")
    assert await unserved_accounts(pool) == 0
    assert await ledger_explains_balances(pool) == []


async def age_recharges(pool: asyncpg.Pool, hours: float, *, first_only: bool) -> None:
    ago = timedelta(hours=hours)
    await pool.execute(
        "UPDATE recharges SET settled_at = now() - $1::interval"
        " WHERE status = 'succeeded' AND ($2 = false OR id = (SELECT min(id) FROM recharges))",
        ago, first_only)


async def test_the_limit_is_a_rolling_24_hours_and_limited_is_said_once_a_day(
        pool: asyncpg.Pool) -> None:
    await make_account(pool, balance="10.00", recharge="20.00", below="5.00")
    await set_max_per_day(pool, "acct-1", 2)
    provider = SimulatedProvider()
    service = RechargeService(pool, provider, FAST)

    async def cross() -> str:
        await cross_below(pool)
        return await service.on_balance_low("acct-1", (await crossings(pool))[-1])

    assert [await cross(), await cross()] == ["succeeded", "succeeded"]
    assert await cross() == "limited"
    assert len(await events(pool, "recharge.limited")) == 1
    await age_recharges(pool, 23.9, first_only=True)
    assert await cross() == "limited"  # both still within 24 hours
    assert await service.sweep() == []  # nor does the sweeper charge a limited account
    assert len(await events(pool, "recharge.limited")) == 1  # said once

    await age_recharges(pool, 24.1, first_only=True)  # the first leaves the window
    assert await service.sweep() == ["succeeded"]  # still below: the sweeper recharges
    assert await cross() == "limited"
    assert len(await events(pool, "recharge.limited")) == 1  # not again within 24 hours
    await pool.execute("UPDATE accounts SET recharge_limited_at = now() - interval '25 hours'")
    assert await cross() == "limited"
    assert len(await events(pool, "recharge.limited")) == 2
    assert len(provider.captured()) == 3

    # A higher limit lets the next one through at once.
    await set_max_per_day(pool, "acct-1", 3)
    assert await service.sweep() == ["succeeded"]
    assert len(provider.captured()) == 4


async def test_an_account_left_below_at_its_limit_is_told_by_the_sweeper_once(
        pool: asyncpg.Pool) -> None:
    """The day's one recharge does not lift the balance above the threshold: the next
    recharge it needs is refused by the limit, and recharge.limited says so at once, not
    at the next balance.low, which may never come."""
    await make_account(pool, balance="10.00", recharge="1.00", below="5.00")
    await set_max_per_day(pool, "acct-1", 1)
    provider = SimulatedProvider()
    service = RechargeService(pool, provider, FAST)
    await cross_below(pool)  # 1.00
    assert await service.on_balance_low("acct-1", (await crossings(pool))[-1]) == "succeeded"
    assert await balance(pool, "acct-1") == EUR("2.00")  # still below 5.00
    assert await events(pool, "recharge.limited") == []
    assert await service.sweep() == ["limited"]
    [limited] = await events(pool, "recharge.limited")
    assert limited["max_per_day"] == 1 and limited["recharges_in_24h"] == 1
    assert await service.sweep() == []  # said once
    assert len(await events(pool, "recharge.limited")) == 1
    assert len(provider.captured()) == 1  # and no card charged past the limit
    assert await unserved_accounts(pool) == 0  # limited is not unserved

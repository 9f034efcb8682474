"""The recharge sweeper against real PostgreSQL: an account left below its threshold (its
``balance.low`` lost, a recharge smaller than the deficit) is recharged until it is above,
one charge per attempt, whoever else sweeps or handles the crossing at the same time;
and one row that fails does not hold up the others."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from prometheus_client import REGISTRY

from consumers.recharge_worker import RechargeWorker
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore
from rating.stores.recharge_sweep import unserved_accounts
from rating.stores.recharges import RechargeOutcome, RechargeService
from tests.payments_support import (
    EUR,
    FAST,
    balance,
    credits,
    crossings,
    debit,
    events,
    make_account,
    recharges,
)
from tests.support import ledger_explains_balances


async def test_a_lost_crossing_and_small_recharges_are_swept_above_the_threshold(
        pool: asyncpg.Pool) -> None:
    await make_account(pool, balance="10.00", recharge="10.00", below="5.00")
    await debit(pool, "acct-1", "30.00")  # 10 -> -20; its balance.low is never handled
    [crossing] = await crossings(pool)
    provider = SimulatedProvider()
    # Two sweepers (two engines) and a balance.low handler arriving at the same moment.
    first, second = (RechargeService(pool, provider, FAST) for _ in range(2))
    assert await unserved_accounts(pool) == 1

    outcomes: list[RechargeOutcome] = []
    for _ in range(10):
        if await balance(pool) >= EUR("5.00"):
            break
        done = await asyncio.gather(first.sweep(), second.sweep(),
                                    first.on_balance_low("acct-1", crossing))
        outcomes += [*done[0], *done[1], done[2]]

    assert await balance(pool) == EUR("10.00")  # -20 + 3 x 10
    assert outcomes.count("succeeded") == 3
    assert len(provider.payments) == 3  # one charge per recharge
    assert [p.idempotency_key.rsplit("/", 1)[1] for p in provider.payments] == ["1"] * 3
    assert await credits(pool, "recharge") == [EUR("10.00")] * 3
    rows = await recharges(pool)
    assert [s for _, s in rows] == ["succeeded"] * 3
    # The first is keyed by the crossing, as the balance.low handler keys it: they met.
    assert rows[0][0] == crossing
    assert len({key for key, _ in rows}) == 3
    assert [e["attempt"] for e in await events(pool, "recharge.succeeded")] == [1, 1, 1]
    assert await first.on_balance_low("acct-1", crossing) == "duplicate"
    assert await first.sweep() == [] and await unserved_accounts(pool) == 0
    assert await ledger_explains_balances(pool) == []


async def test_an_older_crossing_is_superseded_by_the_latest(pool: asyncpg.Pool) -> None:
    await make_account(pool, balance="10.00", recharge="20.00", below="5.00")
    await debit(pool, "acct-1", "6.00")  # first crossing: its event is late
    await AccountStore(pool).credit("acct-1", kind="adjustment", source="adjustment",
                                    key="acct-1/up", amount=EUR("6.00"), reason="test")
    await debit(pool, "acct-1", "6.00")  # a second crossing
    older, latest = await crossings(pool)
    service = RechargeService(pool, SimulatedProvider(), FAST)

    assert await service.on_balance_low("acct-1", older) == "superseded"
    assert await service.on_balance_low("acct-1", latest) == "succeeded"
    assert await service.on_balance_low("acct-1", older) == "not_below"
    assert [key for key, _ in await recharges(pool)] == [latest]


async def test_one_failing_recharge_is_marked_and_does_not_hold_up_the_others(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str,
        caplog: pytest.LogCaptureFixture) -> None:
    store = AccountStore(pool)
    for account_id in ("bad", "good"):
        await make_account(pool, account_id, balance="3.00", recharge=None)
        await store.set_auto_recharge(account_id, amount=EUR("20.00"), below=EUR("5.00"))
    # A ledger row already holds the bad recharge's credit key, for another amount: its
    # payment is taken, and crediting it fails every time (not an outage).
    [(bad_key, _)] = await recharges(pool, "bad")
    await store.credit("bad", kind="recharge", source="recharge", key=bad_key, amount=1)
    provider = SimulatedProvider()
    errors = REGISTRY.get_sample_value("rating_recharge_outcomes_total",
                                       {"outcome": "error"}) or 0.0

    async with RechargeWorker(settings, kafka_bootstrap, pool, provider, policy=FAST) as worker:
        with caplog.at_level(logging.ERROR, logger="rating.stores.recharges"):
            await worker.tick()
            assert await balance(pool, "good") == EUR("23.00")  # served all the same
            row = await pool.fetchrow(
                "SELECT status, errors, last_error, next_attempt_at > now() + interval"
                " '200 seconds' AS later FROM recharges WHERE account_id = 'bad'")
            assert row is not None
            assert (row["status"], row["errors"], row["later"]) == ("charging", 1, True)
            assert "IdempotencyConflict" in row["last_error"]
            assert await worker.recharges.run_due() == []  # no tight loop
            # Due again (its wait over): fails the same way, marked, but not logged again.
            await pool.execute("UPDATE recharges SET next_attempt_at = now()"
                               " WHERE account_id = 'bad'")
            assert await worker.recharges.run_due() == ["error"]
    assert await pool.fetchval("SELECT errors FROM recharges WHERE account_id = 'bad'") == 2
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
    assert REGISTRY.get_sample_value("rating_recharge_outcomes_total",
                                     {"outcome": "error"}) == errors + 1
    # The card was charged once: a re-ask uses the same key, the same payment.
    assert len([p for p in provider.payments if p.account_id == "bad"]) == 1
    assert await balance(pool, "bad") == EUR("3.00") + 1

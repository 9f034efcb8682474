"""Declined automatic recharges against real PostgreSQL (CONTRACT §12): attempts at the
configured waits, then ``recharge.disabled``; a hard decline at once; nothing charged
until the customer turns automatic recharge on again, which recharges at once."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import asyncpg

from rating.payments.provider import ChargeRequest, PaymentResult
from rating.payments.simulated import SimulatedProvider
from rating.stores.accounts import AccountStore
from rating.stores.recharge_settings import account_view
from rating.stores.recharges import RechargeOutcome, RechargePolicy, RechargeService
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
from tests.support import ledger_explains_balances


class ClockedProvider(SimulatedProvider):
    """The simulated provider, noting when each charge was asked for."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.asked: list[float] = []

    async def charge(self, request: ChargeRequest) -> PaymentResult:
        self.asked.append(time.monotonic())
        return await super().charge(request)


async def run_until(service: RechargeService, done: int, provider: SimulatedProvider,
                    timeout_s: float = 30) -> list[RechargeOutcome]:
    """What the worker's tick does, until ``done`` payments were asked for."""
    outcomes: list[RechargeOutcome] = []
    deadline = time.monotonic() + timeout_s
    while len(provider.payments) < done and time.monotonic() < deadline:
        outcomes += await service.run_due()
        await asyncio.sleep(0.05)
    return outcomes


async def test_a_declining_card_is_retried_at_the_waits_then_turned_off(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)  # 10.00, recharge 20.00 below 5.00
    await debit(pool, "acct-1", "6.00")
    [crossing] = await crossings(pool)
    provider = ClockedProvider("decline")
    waits = (0.5, 1.0)  # RATING_RECHARGE_RETRY_SECONDS=0.5,1
    service = RechargeService(pool, provider, RechargePolicy(
        retry_delays_s=waits, answer_timeout_s=5, settle_poll_s=0.1))

    outcomes = [await service.on_balance_low("acct-1", crossing)]
    outcomes += await run_until(service, 3, provider)

    assert outcomes == ["declined", "declined", "failed"]
    gaps = [later - earlier for earlier, later in pairwise(provider.asked)]
    assert gaps[0] >= waits[0] and gaps[1] >= waits[1]
    assert [p.idempotency_key for p in provider.payments] == [
        f"recharge/{crossing}/{n}" for n in (1, 2, 3)]
    failed = await events(pool, "recharge.failed")
    assert [(e["attempt"], e["amount"], e["final"]) for e in failed] == [
        (1, "20.000000", False), (2, "20.000000", False), (3, "20.000000", True)]
    assert [e["attempt"] for e in await events(pool, "recharge.requested")] == [1, 2, 3]
    [disabled] = await events(pool, "recharge.disabled")
    assert disabled["reason"] == "attempts_exhausted"
    assert (disabled["attempt"], disabled["amount"]) == (3, "20.000000")
    assert disabled["decline_reason"] == "card_declined"

    store = AccountStore(pool)
    view = await account_view(pool, await store.get("acct-1"))
    assert view["auto_recharge"]["enabled"] is False  # type: ignore[index]
    assert view["auto_recharge"]["disabled_reason"] == "attempts_exhausted"  # type: ignore[index]
    assert view["last_recharge"] == {
        "status": "failed", "amount": "20.000000", "attempt": 3,
        "at": view["last_recharge"]["at"], "reason": "card_declined"}  # type: ignore[index]

    # Nothing is charged until it is turned on again: not a new crossing, not the
    # sweeper, not the retries' timer.
    provider.set_behaviour("succeed")
    await store.credit("acct-1", kind="adjustment", source="adjustment", key="acct-1/a",
                       amount=EUR("10.00"), reason="goodwill")  # 4 -> 14
    await debit(pool, "acct-1", "12.00")  # 14 -> 2: a new crossing
    assert await service.on_balance_low("acct-1", (await crossings(pool))[-1]) == "disabled"
    await asyncio.sleep(1.1)
    assert await service.sweep() == []
    assert await service.run_due() == []
    assert len(provider.payments) == 3

    # Turned on again while below the threshold: recharged at once.
    account = await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("5.00"))
    assert account.auto_recharge_enabled and account.auto_recharge_disabled_reason is None
    assert await service.run_due() == ["succeeded"]
    assert await balance(pool) == EUR("22.00")
    assert len(provider.captured()) == 1
    assert await ledger_explains_balances(pool) == []


async def test_a_hard_decline_turns_automatic_recharge_off_at_once(pool: asyncpg.Pool) -> None:
    for account_id in ("acct-1", "acct-2"):
        await make_account(pool, account_id)
        await debit(pool, account_id, "6.00")
    provider = SimulatedProvider()
    provider.set_behaviour("hard_decline", account_id="acct-1")  # a closed card
    service = RechargeService(pool, provider, FAST)  # retries would wait 0.6 s

    assert await service.on_balance_low("acct-1", (await crossings(pool, "acct-1"))[0]) \
        == "hard_declined"
    assert await service.on_balance_low("acct-2", (await crossings(pool, "acct-2"))[0]) \
        == "succeeded"
    await asyncio.sleep(0.7)
    assert await service.run_due() == []
    assert await service.sweep() == []
    assert [p.status for p in provider.payments if p.account_id == "acct-1"] == ["declined"]
    assert [status for _, status in await recharges(pool)] == ["failed"]
    [failed] = await events(pool, "recharge.failed")
    assert (failed["reason"], failed["decline"], failed["final"]) == (
        "card_closed", "hard", True)
    [disabled] = await events(pool, "recharge.disabled")
    assert (disabled["reason"], disabled["attempt"], disabled["amount"]) == (
        "hard_decline", 1, "20.000000")
    assert await events(pool, "recharge.disabled", "acct-2") == []
    account = await AccountStore(pool).get("acct-1")
    assert not account.auto_recharge_enabled
    assert account.auto_recharge_disabled_reason == "hard_decline"
    assert account.auto_recharge_disabled_at is not None
    assert await balance(pool) == EUR("4.00")


async def test_a_customer_who_turned_it_off_meanwhile_keeps_that_choice(
        pool: asyncpg.Pool) -> None:
    """The last attempt declines after the customer turned automatic recharge off: the
    recharge fails, and no recharge.disabled claims the engine turned it off."""
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    provider = SimulatedProvider("delay:60")
    service = RechargeService(pool, provider, RechargePolicy(
        retry_delays_s=(), answer_timeout_s=5, settle_poll_s=0.05))
    assert await service.on_balance_low("acct-1", (await crossings(pool))[0]) == "pending"
    await AccountStore(pool).set_auto_recharge("acct-1", amount=None, below=None)
    provider.payments[0].status = "declined"  # the provider declines it after all
    await asyncio.sleep(0.1)

    assert await service.settle_pending() == ["failed"]
    assert await events(pool, "recharge.disabled") == []
    account = await AccountStore(pool).get("acct-1")
    assert account.auto_recharge_disabled_reason is None and not account.auto_recharge_enabled

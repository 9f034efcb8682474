"""One-time top-ups against real PostgreSQL: only money actually paid is credited, once per
idempotency key, whatever the provider answers and whenever."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine
from typing import Any

import asyncpg
import orjson
import pytest

from commands.accounts import cmd_topup
from rating.core.errors import IdempotencyConflict, PaymentDeclined
from rating.payments.provider import ChargeRequest
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.topups import TopupService
from tests.payments_support import EUR, FAST, balance, credits, debit, make_account
from tests.support import ledger_explains_balances


async def test_topups_credit_only_paid_money_once_per_key(pool: asyncpg.Pool) -> None:
    await make_account(pool, recharge=None)
    provider = SimulatedProvider()
    topups = TopupService(pool, provider, FAST)

    first = await topups.topup("acct-1", EUR("7.50"), "k1")
    replay = await topups.topup("acct-1", EUR("7.50"), "k1")
    with pytest.raises(IdempotencyConflict):
        await topups.topup("acct-1", EUR("8.00"), "k1")
    provider.set_behaviour("decline")
    with pytest.raises(PaymentDeclined) as declined:
        await topups.topup("acct-1", EUR("1.00"), "k2")

    assert (first.status, first.credited, first.replay) == ("succeeded", True, False)
    assert (replay.status, replay.credited, replay.replay) == ("succeeded", False, True)
    assert declined.value.code == "payment_declined"
    assert [p.amount for p in provider.captured()] == [EUR("7.50")]
    assert len(provider.payments) == 2
    assert await credits(pool, "topup") == [EUR("7.50")]
    assert await balance(pool) == EUR("17.50")


async def test_a_pending_topup_is_credited_by_the_settle_poll(pool: asyncpg.Pool) -> None:
    await make_account(pool, recharge=None)
    provider = SimulatedProvider("delay:0.5")
    topups = TopupService(pool, provider, FAST)

    pending = await topups.topup("acct-1", EUR("5.00"), "slow")
    assert (pending.status, pending.credited) == ("pending", False)
    assert await topups.settle_pending() == 0
    await asyncio.sleep(0.6)
    assert await topups.settle_pending() == 1
    assert await topups.settle_pending() == 0
    replay = await topups.topup("acct-1", EUR("5.00"), "slow")
    assert (replay.status, replay.credited) == ("succeeded", False)
    assert await credits(pool, "topup") == [EUR("5.00")]
    assert await balance(pool) == EUR("15.00")
    assert len(provider.payments) == 1


async def test_concurrent_topups_and_usage_leave_an_exact_balance(pool: asyncpg.Pool) -> None:
    await make_account(pool, balance="100.00", recharge=None)
    topups = TopupService(pool, SimulatedProvider(), FAST)
    amounts = [EUR(f"{n}.{n:02d}") for n in range(1, 21)]
    jobs: list[Coroutine[Any, Any, object]] = [
        topups.topup("acct-1", a, f"k{i}") for i, a in enumerate(amounts)]
    jobs += [topups.topup("acct-1", a, f"k{i}") for i, a in enumerate(amounts[:5])]  # replays
    jobs += [debit(pool, "acct-1", "0.333333") for _ in range(60)]

    await asyncio.gather(*jobs)

    expected = EUR("100.00") + sum(amounts) - 60 * EUR("0.333333")
    assert await balance(pool) == expected
    assert await ledger_explains_balances(pool) == []
    assert len(await credits(pool, "topup")) == 20


async def test_simulated_provider_specs_and_deduplication() -> None:
    assert SimulatedProvider.from_spec("delay:2.5") is not None
    for bad in ("", "sometimes", "delay:", "delay:-1", "delay:nan", "delay:inf"):
        with pytest.raises(ValueError):
            SimulatedProvider.from_spec(bad)

    provider = SimulatedProvider.from_spec("succeed")
    request = ChargeRequest("a", 5, "EUR", "key-1")
    first = await provider.charge(request)
    assert await provider.charge(request) == first
    assert await provider.status(first.payment_id) == first
    assert len(provider.payments) == 1 and provider.charge_calls == 2


async def test_cli_topup_charges_through_the_provider(settings: Settings,
                                                      pool: asyncpg.Pool) -> None:
    await make_account(pool, recharge=None)
    provider = SimulatedProvider()
    out = io.StringIO()
    assert await cmd_topup(settings, out, "acct-1", "2.50", "cli-1", provider) == 0
    assert await cmd_topup(settings, out, "acct-1", "2.50", "cli-1", provider) == 0
    first, second = (orjson.loads(part + "}") for part in out.getvalue().split("\n}\n")[:2])
    assert (first["payment"], first["credited"], first["balance"]) == (
        "succeeded", True, "12.500000")
    assert (second["credited"], second["balance"]) == (False, "12.500000")
    # A card that takes a while: said so, and credited once it lands.
    provider.set_behaviour("delay:30")
    out = io.StringIO()
    assert await cmd_topup(settings, out, "acct-1", "1.00", "cli-late", provider) == 0
    late = orjson.loads(out.getvalue())
    assert (late["payment"], late["credited"], late["balance"]) == (
        "pending", False, "12.500000")
    provider.set_behaviour("decline")
    with pytest.raises(PaymentDeclined):
        await cmd_topup(settings, io.StringIO(), "acct-1", "1.00", "cli-2", provider)
    assert len(provider.captured()) == 1
    assert await balance(pool) == EUR("12.50")


async def test_one_key_from_two_processes_is_one_payment(pool: asyncpg.Pool) -> None:
    # Two replicas (or the API and the command line), each with its own provider client:
    # whichever sends the key's charge first, the other never sends a second one.
    await make_account(pool, recharge=None)
    first, second = SimulatedProvider(), SimulatedProvider()
    replicas = [TopupService(pool, first, FAST), TopupService(pool, second, FAST)]
    results = await asyncio.gather(*(
        replicas[n % 2].topup("acct-1", EUR("10.00"), "same-key") for n in range(10)))
    assert first.charge_calls + second.charge_calls == 1
    assert sum(r.credited for r in results) == 1
    assert {r.status for r in results} <= {"succeeded", "pending"}
    assert await credits(pool, "topup") == [EUR("10.00")]

    # Pending at the bank: the other replica asks about that payment, it pays no new one.
    first.set_behaviour("delay:0.3")
    second.set_behaviour("delay:0.3")
    pending = await replicas[0].topup("acct-1", EUR("5.00"), "slow-key")
    assert pending.status == "pending" and first.charge_calls == 2
    await asyncio.sleep(0.4)
    settled = await replicas[1].topup("acct-1", EUR("5.00"), "slow-key")
    assert (settled.status, settled.credited) == ("succeeded", True)
    assert (first.charge_calls, second.charge_calls) == (2, 0)
    assert await balance(pool) == EUR("25.00")
    assert await ledger_explains_balances(pool) == []


async def test_top_ups_on_their_way_count_against_the_balance_bound(pool: asyncpg.Pool) -> None:
    from rating.core.errors import BalanceOutOfBounds
    from rating.core.money import BALANCE_BOUND

    await make_account(pool, recharge=None)
    await pool.execute("UPDATE accounts SET balance = $1 WHERE id = 'acct-1'",
                       BALANCE_BOUND - EUR("10.00"))
    provider = SimulatedProvider("delay:5")  # both would still be at the bank
    topups = TopupService(pool, provider, FAST)
    outcomes = await asyncio.gather(*(topups.topup("acct-1", EUR("6.00"), f"near-{n}")
                                      for n in range(2)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, BalanceOutOfBounds)]
    assert len(refused) == 1, outcomes  # the second would have been charged, never credited
    assert provider.charge_calls == 1


async def test_a_recharge_counts_top_ups_on_their_way_against_the_balance_bound(
        pool: asyncpg.Pool) -> None:
    from rating.core.money import BALANCE_BOUND
    from rating.stores.recharges import RechargeService
    from tests.payments_support import crossings

    await make_account(pool, recharge="10.00", below="5.00")
    await pool.execute("UPDATE accounts SET balance = $1, low_balance_threshold = $2",
                       BALANCE_BOUND - EUR("14.00"), BALANCE_BOUND - EUR("15.00"))
    provider = SimulatedProvider("delay:60")  # the top-up stays at the bank
    pending = await TopupService(pool, provider, FAST).topup("acct-1", EUR("7.00"), "t1")
    assert pending.status == "pending"
    await debit(pool, "acct-1", "2.00")  # below the threshold: a recharge of 10.00 is due
    [crossing] = await crossings(pool)
    # 10.00 would fit alone; with the 7.00 on its way the credit would pass the bound.
    outcome = await RechargeService(pool, provider, FAST).on_balance_low("acct-1", crossing)
    assert outcome == "cancelled"
    assert provider.charge_calls == 1  # the top-up's only
    assert await pool.fetchval("SELECT last_reason FROM recharges") == (
        "cancelled: the balance would exceed its bound")

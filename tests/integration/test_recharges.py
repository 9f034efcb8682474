"""Automatic recharges against real PostgreSQL and broker: every payment credited exactly
once, declines backed off, one recharge in flight per account."""

from __future__ import annotations

import asyncio
import logging
import struct

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from consumers.outbox_relay import OutboxRelay
from consumers.recharge_worker import RechargeWorker, decode_balance_low
from rating.core.errors import InvalidEvent
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore
from rating.stores.recharges import RechargePolicy, RechargeService
from rating.stores.topups import TopupService
from tests.payments_support import (
    EUR,
    FAST,
    balance,
    credits,
    crossings,
    debit,
    make_account,
    outbox_types,
    recharges,
)
from tests.support import create_topics, ledger_explains_balances, wait_until


async def test_a_crossing_delivered_three_times_charges_and_credits_once(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")  # 10 -> 4, below 5
    [crossing] = await crossings(pool)
    provider = SimulatedProvider()
    service = RechargeService(pool, provider, FAST)

    first = await asyncio.gather(*(service.on_balance_low("acct-1", crossing) for _ in range(3)))
    again = await service.on_balance_low("acct-1", crossing)

    assert sorted(first) == ["duplicate", "duplicate", "succeeded"]
    assert again == "duplicate"
    assert [p.amount for p in provider.captured()] == [EUR("20.00")]
    assert await credits(pool, "recharge") == [EUR("20.00")]
    assert await balance(pool) == EUR("24.00")
    types = await outbox_types(pool)
    assert types.count("recharge.requested") == 1
    assert types.count("recharge.succeeded") == 1
    assert types.count("topup.credited") == 1
    assert types.count("balance.recovered") == 1
    assert await ledger_explains_balances(pool) == []
    row = await pool.fetchrow("SELECT status, attempt, payment_id FROM recharges")
    assert row is not None
    assert (row["status"], row["attempt"]) == ("succeeded", 1)
    assert row["payment_id"] == provider.captured()[0].payment_id


async def test_no_recharge_when_off_or_already_recovered(pool: asyncpg.Pool) -> None:
    await make_account(pool, "off", recharge=None)
    await debit(pool, "off", "6.00")
    await make_account(pool, "back")
    await debit(pool, "back", "6.00")
    await AccountStore(pool).credit("back", kind="topup", source="topup", key="back/k",
                                    amount=EUR("5.00"))
    provider = SimulatedProvider()
    service = RechargeService(pool, provider, FAST)

    assert await service.on_balance_low("off", (await crossings(pool, "off"))[0]) == "disabled"
    assert await service.on_balance_low("back", (await crossings(pool, "back"))[0]) \
        == "not_below"
    assert await service.on_balance_low("nobody", "nobody:1:balance.low") == "unknown_account"
    assert provider.payments == []


async def test_turning_auto_recharge_on_below_the_threshold_recharges_at_once(
        pool: asyncpg.Pool) -> None:
    """No crossing is coming for a balance that is already low: the setting itself asks."""
    await make_account(pool, balance="3.00", recharge=None)  # below 5, auto-recharge off
    store = AccountStore(pool)
    account = await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("5.00"))
    provider = SimulatedProvider()
    service = RechargeService(pool, provider, FAST)

    assert await recharges(pool) == [(f"acct-1:{account.version}:auto-recharge.on",
                                      "requested")]
    assert await service.run_due() == ["succeeded"]  # what the worker's tick does
    assert [p.amount for p in provider.captured()] == [EUR("20.00")]
    assert await balance(pool) == EUR("23.00")
    types = await outbox_types(pool)
    assert types.count("recharge.requested") == 1 and types.count("recharge.succeeded") == 1
    extra = orjson.loads(await pool.fetchval(
        "SELECT extra FROM outbox WHERE type = 'recharge.requested'"))
    assert extra == {"amount": "20.000000", "attempt": 1,
                     "crossing_id": f"acct-1:{account.version}:auto-recharge.on"}
    assert await ledger_explains_balances(pool) == []
    # Saying the same again (a retried request) is not a new reason to charge the card.
    await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("5.00"))
    assert await service.run_due() == []
    assert len(provider.payments) == 1


async def test_raising_the_threshold_above_the_balance_recharges_at_once(
        pool: asyncpg.Pool) -> None:
    await make_account(pool, balance="10.00")  # on, below 5: not due
    store = AccountStore(pool)
    await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("8.00"))
    assert await recharges(pool) == []  # 10 is still at or above 8
    await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("15.00"))
    provider = SimulatedProvider()

    assert await RechargeService(pool, provider, FAST).run_due() == ["succeeded"]
    assert await balance(pool) == EUR("30.00")
    assert [status for _, status in await recharges(pool)] == ["succeeded"]


async def test_each_time_it_is_turned_on_below_the_threshold_is_one_recharge(
        pool: asyncpg.Pool) -> None:
    """Declined to the end, then the customer fixes the card and turns it off and on:
    that asks again, with a new id; while one is in flight, turning it on adds none."""
    await make_account(pool, balance="3.00", recharge=None)
    store = AccountStore(pool)
    provider = SimulatedProvider("decline")
    policy = RechargePolicy(retry_delays_s=(), answer_timeout_s=5, settle_poll_s=0.1)
    service = RechargeService(pool, provider, policy)
    await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("5.00"))
    assert await service.run_due() == ["failed"]

    await store.set_auto_recharge("acct-1", amount=None, below=None)
    await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("5.00"))
    await store.set_auto_recharge("acct-1", amount=None, below=None)
    await store.set_auto_recharge("acct-1", amount=EUR("25.00"), below=EUR("5.00"))
    [(first, failed), (second, requested)] = await recharges(pool)
    assert (failed, requested) == ("failed", "requested") and first != second
    provider.set_behaviour("succeed")
    assert await service.run_due() == ["succeeded"]
    assert await balance(pool) == EUR("28.00")  # the amount configured last
    assert await ledger_explains_balances(pool) == []


async def test_turning_auto_recharge_on_above_the_threshold_charges_nothing(
        pool: asyncpg.Pool) -> None:
    await make_account(pool, balance="10.00", recharge=None)
    await AccountStore(pool).set_auto_recharge("acct-1", amount=EUR("20.00"),
                                               below=EUR("5.00"))
    assert await recharges(pool) == []
    assert await RechargeService(pool, SimulatedProvider(), FAST).run_due() == []


async def test_a_decline_announces_failure_and_retries_later_not_at_once(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    [crossing] = await crossings(pool)
    provider = SimulatedProvider()
    provider.set_behaviour("decline", account_id="acct-1")
    service = RechargeService(pool, provider, FAST)

    assert await service.on_balance_low("acct-1", crossing) == "declined"
    extra = orjson.loads(await pool.fetchval(
        "SELECT extra FROM outbox WHERE type = 'recharge.failed'"))
    assert extra["reason"] == "card_declined" and extra["final"] is False
    assert extra["attempt"] == 1 and extra["amount"] == "20.000000"
    assert await credits(pool, "recharge") == []
    assert await balance(pool) == EUR("4.00")
    # Not immediately, however often the worker ticks: no retry storm.
    for _ in range(5):
        assert await service.run_due() == []
    assert len(provider.payments) == 1
    row = await pool.fetchrow(
        "SELECT status, attempt, next_attempt_at > now() AS later FROM recharges")
    assert row is not None
    assert (row["status"], row["attempt"], row["later"]) == ("requested", 2, True)

    provider.set_behaviour("succeed", account_id="acct-1")
    await asyncio.sleep(0.7)
    assert await service.run_due() == ["succeeded"]
    assert [p.status for p in provider.payments] == ["declined", "succeeded"]
    assert await credits(pool, "recharge") == [EUR("20.00")]
    assert await balance(pool) == EUR("24.00")
    assert await service.run_due() == []


async def test_declines_give_up_after_the_last_attempt(pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    provider = SimulatedProvider("decline")
    policy = RechargePolicy(retry_delays_s=(0.0, 0.0), answer_timeout_s=5, settle_poll_s=0.1)
    service = RechargeService(pool, provider, policy)

    assert await service.on_balance_low("acct-1", (await crossings(pool))[0]) == "declined"
    assert await service.run_due() == ["declined"]
    assert await service.run_due() == ["failed"]
    assert await service.run_due() == []
    assert len(provider.payments) == 3
    assert len({p.idempotency_key for p in provider.payments}) == 3
    assert await pool.fetchval("SELECT status FROM recharges") == "failed"
    finals = await pool.fetch("SELECT (extra->'final')::boolean AS final FROM outbox"
                              " WHERE type = 'recharge.failed' ORDER BY seq")
    assert [r["final"] for r in finals] == [False, False, True]
    assert await balance(pool) == EUR("4.00")


async def test_a_retry_is_cancelled_when_the_customer_topped_up_meanwhile(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    provider = SimulatedProvider("decline")
    service = RechargeService(pool, provider, FAST)
    topups = TopupService(pool, SimulatedProvider(), FAST)
    assert await service.on_balance_low("acct-1", (await crossings(pool))[0]) == "declined"

    await topups.topup("acct-1", EUR("10.00"), "manual-1")  # 4 -> 14, above 5
    provider.set_behaviour("succeed")
    await asyncio.sleep(0.7)

    assert await service.run_due() == ["cancelled"]
    assert len(provider.payments) == 1
    assert await pool.fetchval("SELECT status FROM recharges") == "cancelled"
    assert await balance(pool) == EUR("14.00")


async def test_a_delayed_settlement_credits_once_later(pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    [crossing] = await crossings(pool)
    provider = SimulatedProvider("delay:0.8")
    service = RechargeService(pool, provider, FAST)

    assert await service.on_balance_low("acct-1", crossing) == "pending"
    assert await balance(pool) == EUR("4.00")
    await asyncio.sleep(0.2)
    assert await service.settle_pending() == ["pending"]
    assert await service.on_balance_low("acct-1", crossing) == "duplicate"
    assert await credits(pool, "recharge") == []

    await asyncio.sleep(0.8)
    assert await service.settle_pending() == ["succeeded"]
    await asyncio.sleep(0.2)
    assert await service.settle_pending() == []
    assert await service.run_due() == []
    assert len(provider.payments) == 1
    assert await credits(pool, "recharge") == [EUR("20.00")]
    assert await balance(pool) == EUR("24.00")


async def test_a_pending_payment_the_provider_no_longer_knows_is_marked_never_credited(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    [crossing] = await crossings(pool)
    before = RechargeService(pool, SimulatedProvider("delay:60"), FAST)
    assert await before.on_balance_low("acct-1", crossing) == "pending"
    # A payment id the provider never made (another provider's, a lost record): it
    # must never be answered by a payment of the provider's own.
    await pool.execute("UPDATE recharges SET payment_id = 'simpay_000001'")
    provider = SimulatedProvider("succeed")
    await TopupService(pool, provider, FAST).topup("acct-1", EUR("1.00"), "other")
    await asyncio.sleep(0.2)
    assert await RechargeService(pool, provider, FAST).settle_pending() == ["error"]
    row = await pool.fetchrow("SELECT status, errors, last_error, next_attempt_at > now()"
                              " + interval '1 second' AS later FROM recharges")
    assert (row["status"], row["errors"], row["later"]) == ("pending", 1, True)
    assert "UnknownPayment" in row["last_error"]
    assert await credits(pool, "recharge") == []
    assert await balance(pool) == EUR("5.00")


async def test_a_recharge_pending_across_a_restart_is_credited_once_when_due(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    [crossing] = await crossings(pool)
    before = RechargeService(pool, SimulatedProvider("delay:0.5"), FAST)
    assert await before.on_balance_low("acct-1", crossing) == "pending"
    after = RechargeService(pool, SimulatedProvider("succeed"), FAST)  # restarted
    await asyncio.sleep(0.7)
    assert await after.settle_pending() == ["succeeded"]
    assert await credits(pool, "recharge") == [EUR("20.00")]
    assert await balance(pool) == EUR("24.00")


async def test_an_unanswered_charge_is_asked_again_with_the_same_key(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    provider = SimulatedProvider("unavailable")
    service = RechargeService(pool, provider, FAST)

    assert await service.on_balance_low("acct-1", (await crossings(pool))[0]) == "unavailable"
    assert await service.run_due() == []  # not before the answer timeout
    provider.set_behaviour("succeed")
    await asyncio.sleep(0.7)
    assert await service.run_due() == ["succeeded"]
    assert provider.charge_calls == 2
    assert len(provider.payments) == 1
    assert await credits(pool, "recharge") == [EUR("20.00")]


async def test_one_recharge_in_flight_per_account(pool: asyncpg.Pool) -> None:
    await make_account(pool)
    provider = SimulatedProvider("delay:60")
    service = RechargeService(pool, provider, FAST)
    await debit(pool, "acct-1", "6.00")  # first crossing
    assert await service.on_balance_low("acct-1", (await crossings(pool))[0]) == "pending"
    await AccountStore(pool).credit("acct-1", kind="adjustment", source="adjustment",
                                    key="fix", amount=EUR("3.00"), reason="goodwill")
    await debit(pool, "acct-1", "3.00")  # a second crossing while the first is pending
    second = (await crossings(pool))[1]

    assert await service.on_balance_low("acct-1", second) == "in_flight"
    assert len(provider.payments) == 1
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(
            "INSERT INTO recharges (crossing_id, account_id, amount, currency, next_attempt_at)"
            " VALUES ('forced', 'acct-1', 1, 'EUR', now())")


def test_decoding_balance_events() -> None:
    low = orjson.dumps({"id": "a:3:balance.low", "type": "balance.low", "subject": "a",
                        "data": {"account_id": "a"}})
    assert decode_balance_low(low) == ("a", "a:3:balance.low")
    assert decode_balance_low(b'{"type": "topup.credited", "id": "x"}') is None
    for bad in (b"", b"not json", b"[]", b'{"id": "x"}', b'{"type": "balance.low"}'):
        with pytest.raises(InvalidEvent):
            decode_balance_low(bad)


async def test_worker_recharges_once_across_redeliveries_and_a_restart(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await create_topics(settings, kafka_bootstrap)
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    provider = SimulatedProvider()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    relay = OutboxRelay(pool, producer, settings.balance_topic)
    try:
        # Junk on the topic is skipped, never fatal.
        await producer.send_and_wait(settings.balance_topic, b"not json", key=b"acct-1")
        assert await relay.relay_once() == 1  # balance.low, delivery 1
        async with RechargeWorker(settings, kafka_bootstrap, pool, provider, policy=FAST,
                                  tick_s=0.2) as first:
            task = asyncio.create_task(first.run())

            async def recharged() -> bool:
                return await balance(pool) == EUR("24.00")

            await wait_until(recharged, what="the recharge credit")
            first.request_stop()
            await task
        assert first.handled["succeeded"] == 1
        await first.close()  # safe twice

        # The relay crashed before marking: the same balance.low goes out again, twice.
        for _ in range(2):
            await pool.execute("UPDATE outbox SET sent_at = NULL WHERE type = 'balance.low'")
            await relay.relay_once()
        async with RechargeWorker(settings, kafka_bootstrap, pool, provider, policy=FAST,
                                  tick_s=0.2) as second:
            task = asyncio.create_task(second.run())

            async def both_seen() -> bool:
                return second.handled["duplicate"] >= 2

            await wait_until(both_seen, what="the redeliveries")

            # Its Kafka client stops fetching (aiokafka's fetch task ends on an error):
            # a new one joins, and a third redelivery is seen, still charging nothing.
            client = second._consumer

            def broken(assignment: object) -> None:
                raise struct.error("'i' format requires -2147483648 <= number <= 2147483647")

            client._fetcher._get_actions_per_node = broken

            async def replaced() -> bool:
                return second._consumer is not client

            await wait_until(replaced, what="a new Kafka client")
            await pool.execute("UPDATE outbox SET sent_at = NULL WHERE type = 'balance.low'")
            await relay.relay_once()

            async def third_seen() -> bool:
                return second.handled["duplicate"] >= 3

            await wait_until(third_seen, what="the redelivery after the new client")
            second.request_stop()
            await task
    finally:
        await producer.stop()

    assert len(provider.captured()) == 1
    assert await credits(pool, "recharge") == [EUR("20.00")]
    assert await balance(pool) == EUR("24.00")
    assert await ledger_explains_balances(pool) == []


async def test_recharges_in_flight_are_reported_until_they_settle(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    """A recharge in flight blocks the next one for its account: SRE sees how many there
    are and how old the oldest is (rating_recharge_oldest_in_flight_seconds)."""
    await make_account(pool)
    provider = SimulatedProvider("delay:1.0")  # the card payment lands later

    def sample(name: str, status: str | None = None) -> float | None:
        labels = {} if status is None else {"status": status}
        return REGISTRY.get_sample_value(name, labels)

    async with RechargeWorker(settings, kafka_bootstrap, pool, provider, policy=FAST) as worker:
        await worker.tick()
        assert sample("rating_recharges_in_flight", "pending") == 0
        assert sample("rating_recharge_oldest_in_flight_seconds") == 0
        # After the first tick: its sweep would have found the account below and recharged.
        await debit(pool, "acct-1", "6.00")
        crossing = (await crossings(pool))[0]
        assert await worker.recharges.on_balance_low("acct-1", crossing) == "pending"
        await asyncio.sleep(0.3)
        await worker.tick()
        assert sample("rating_recharges_in_flight", "pending") == 1
        assert sample("rating_recharges_in_flight", "requested") == 0
        oldest = sample("rating_recharge_oldest_in_flight_seconds")
        assert oldest is not None and 0.3 <= oldest < 60

        await asyncio.sleep(1.0)
        await worker.tick()  # the payment has landed: settled, credited, nothing in flight
        assert await balance(pool) == EUR("24.00")
        assert sample("rating_recharges_in_flight", "pending") == 0
        assert sample("rating_recharge_oldest_in_flight_seconds") == 0
        await _an_outage_is_logged_once_not_per_step_and_tick(worker)


async def _an_outage_is_logged_once_not_per_step_and_tick(worker: RechargeWorker) -> None:
    async def refused() -> list[str]:
        raise ConnectionRefusedError("connection refused")

    handler = _Lines()
    logger = logging.getLogger("consumers.recharge_worker")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(worker.recharges, "run_due", refused)
            patch.setattr(worker.recharges, "settle_pending", refused)
            for _ in range(5):
                await worker.tick()
        await worker.tick()
    finally:
        logger.removeHandler(handler)
    assert len(handler.lines) == 2, handler.lines
    assert handler.lines[0].startswith("recharge retries failed (ConnectionRefusedError")
    assert handler.lines[1] == "recharge worker: postgresql answers again"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())



async def test_turning_it_off_during_a_retry_wait_calls_the_retry_off_at_once(
        pool: asyncpg.Pool) -> None:
    await make_account(pool)
    await debit(pool, "acct-1", "6.00")
    provider = SimulatedProvider("decline")
    service = RechargeService(pool, provider, RechargePolicy(
        retry_delays_s=(600.0,), answer_timeout_s=0.6, settle_poll_s=0.1))
    assert await service.on_balance_low("acct-1", (await crossings(pool))[0]) == "declined"
    assert await service.run_due() == []  # the retry waits ten minutes
    await AccountStore(pool).set_auto_recharge("acct-1", amount=None, below=None)
    assert await service.run_due() == ["cancelled"]  # not ten minutes later
    assert await pool.fetchval("SELECT last_reason FROM recharges") == (
        "cancelled: auto-recharge was turned off")
    assert len(provider.payments) == 1

"""Every multi-row loop handles each row's failure alone, and balance events keep their order:
the outbox relay (two of them at once), top-up settling, the tariff reload check."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from consumers.outbox_relay import OutboxRelay
from consumers.tariff_watcher import TariffWatcher
from rating.core.money import BALANCE_BOUND, parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.plans_in_use import plans_in_use
from rating.stores.recharges import RechargePolicy
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore
from tests.support import REPO, create_topics, read_topic

ACCOUNTS = ["acct-a", "acct-b", "acct-c", "acct-d"]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def producers(kafka_bootstrap: str) -> AsyncIterator[list[AIOKafkaProducer]]:
    """One producer per relay, as two replicas would have."""
    made = [AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all") for _ in range(2)]
    for producer in made:
        await producer.start()
    yield made
    for producer in made:
        await producer.stop()


class SlowProducer:
    """A replica whose sends take a while (a slow network, a busy host)."""

    def __init__(self, real: AIOKafkaProducer) -> None:
        self._real = real

    async def send(self, topic: str, **kwargs: Any) -> Any:
        await asyncio.sleep(0.01)
        return await self._real.send(topic, **kwargs)


async def test_with_two_relays_an_accounts_balance_events_arrive_in_version_order(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str,
        producers: list[AIOKafkaProducer]) -> None:
    await create_topics(settings, kafka_bootstrap)
    store = AccountStore(pool)
    await store.create_many(NewAccount(a, "standard", "EUR") for a in ACCOUNTS)
    for i in range(30):  # each credit announces topup.credited at the account's next version
        for account in ACCOUNTS:
            await store.credit(account, kind="topup", source="topup", key=f"{account}/{i}",
                               amount=parse_amount("1"))
    slow = SlowProducer(producers[0])
    relays = [OutboxRelay(pool, producer, settings.balance_topic, idle_poll_s=0.005, batch=3)
              for producer in (slow, producers[1])]  # type: ignore[arg-type]
    running = [asyncio.create_task(relay.run()) for relay in relays]
    messages = await read_topic(kafka_bootstrap, settings.balance_topic, 120, timeout_s=60)
    for relay in relays:
        relay.request_stop()
    await asyncio.gather(*running)
    seen: dict[str, list[int]] = {}
    for message in messages:  # one partition per account: arrival order is its order
        event = orjson.loads(message.value)
        seen.setdefault(event["subject"], []).append(event["data"]["version"])
    assert sorted(seen) == ACCOUNTS
    for account, versions in seen.items():
        assert versions == sorted(versions), (account, versions)
        assert sorted(set(versions)) == list(range(1, 31)), account
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


class DownBroker:
    """A broker that does not answer: every send fails as an outage."""

    async def send(self, topic: str, **kwargs: Any) -> Any:
        raise KafkaConnectionError("broker unreachable")


async def test_while_the_broker_is_out_the_backlog_gauge_shows_what_waits(
        settings: Settings, pool: asyncpg.Pool) -> None:
    store = AccountStore(pool)
    await store.create(NewAccount("acct-a", "standard", "EUR"))
    for key in ("k1", "k2", "k3"):
        await store.credit("acct-a", kind="topup", source="topup", key=key, amount=1_000_000)
    relay = OutboxRelay(pool, DownBroker(), settings.balance_topic)  # type: ignore[arg-type]
    with pytest.raises(KafkaConnectionError):
        await relay.relay_once()
    assert metric("rating_outbox_backlog_events") == 3  # RatingOutboxBacklogGrowing can fire
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 3


async def test_a_row_that_cannot_be_published_is_set_aside_and_the_rest_go(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str,
        producers: list[AIOKafkaProducer], caplog: pytest.LogCaptureFixture) -> None:
    await create_topics(settings, kafka_bootstrap)
    store = AccountStore(pool)
    await store.create(NewAccount("acct-a", "standard", "EUR"))
    await store.credit("acct-a", kind="topup", source="topup", key="k1", amount=1_000_000)
    # A record no broker takes (2 MB): its data, not an outage.
    await pool.execute(
        "INSERT INTO outbox (event_id, type, account_id, balance, threshold, currency, extra)"
        " VALUES ('huge', 'topup.credited', 'acct-a', 0, 0, 'EUR',"
        "         jsonb_build_object('note', repeat('x', 2000000)))")
    await store.credit("acct-a", kind="topup", source="topup", key="k2", amount=1_000_000)
    failures_before = metric("rating_outbox_row_failures_total")
    relay = OutboxRelay(pool, producers[0], settings.balance_topic, retention_s=0)
    with caplog.at_level(logging.DEBUG, logger="consumers.outbox_relay"):
        assert await relay.relay_once() == 2
        assert await relay.relay_once() == 0  # not tried again at once
        assert await relay.relay_once() == 0
    row = await pool.fetchrow("SELECT * FROM outbox WHERE event_id = 'huge'")
    assert row["sent_at"] is None and row["failures"] == 1
    assert "MessageSizeTooLargeError" in row["last_error"]
    assert await pool.fetchval("SELECT next_attempt_at > now() + interval '50 seconds'"
                               " FROM outbox WHERE event_id = 'huge'")
    assert row["version"] == 1  # the account's version when it was written
    assert metric("rating_outbox_row_failures_total") == failures_before + 1
    assert metric("rating_outbox_rows_set_aside") == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "huge" in errors[0].getMessage()
    messages = await read_topic(kafka_bootstrap, settings.balance_topic, 2)
    assert [orjson.loads(m.value)["data"]["version"] for m in messages] == [1, 2]
    # Sent rows go after their retention (here: at once); the set-aside one stays.
    assert await relay.purge_sent() == 2
    assert await pool.fetchval("SELECT array_agg(event_id) FROM outbox") == ["huge"]


FAST = RechargePolicy(settle_poll_s=0.1, answer_timeout_s=0.1)


async def test_a_topup_that_cannot_be_credited_does_not_block_the_next(
        pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    store = AccountStore(pool)
    await store.create_many(NewAccount(a, "standard", "EUR") for a in ("acct-a", "acct-b"))
    topups = TopupService(pool, SimulatedProvider("delay:0.3"), FAST)
    assert (await topups.topup("acct-a", parse_amount("5"), "k")).status == "pending"
    assert (await topups.topup("acct-b", parse_amount("5"), "k")).status == "pending"
    # While its payment is pending, acct-a comes to a micro-unit below the bound (a
    # top-up is refused up front when it would not fit): now its credit cannot land.
    await pool.execute("UPDATE accounts SET opening_balance = $1, balance = $1"
                       " WHERE id = 'acct-a'", BALANCE_BOUND - 1)
    await asyncio.sleep(0.4)
    with caplog.at_level(logging.DEBUG, logger="rating.stores.topups"):
        assert await topups.settle_pending() == 1  # acct-b, behind acct-a
        await asyncio.sleep(0.3)
        assert await topups.settle_pending() == 0  # acct-a is not asked again at once
    assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 'acct-b'") == (
        parse_amount("5"))
    row = await pool.fetchrow("SELECT * FROM topup_payments WHERE account_id = 'acct-a'")
    assert (row["status"], row["failures"]) == ("pending", 1)
    assert "balance_out_of_range" in row["last_error"] or "past" in row["last_error"]
    assert await pool.fetchval("SELECT next_check_at > now() + interval '50 seconds'"
                               " FROM topup_payments WHERE account_id = 'acct-a'")
    assert topups.settle_failures == 1 and await topups.failing() == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "acct-a" in errors[0].getMessage()
    assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 'acct-a'") == (
        BALANCE_BOUND - 1)


async def test_a_payment_the_provider_no_longer_knows_is_set_aside_never_credited(
        pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    store = AccountStore(pool)
    await store.create_many(NewAccount(a, "standard", "EUR") for a in ("acct-a", "acct-b"))
    before = TopupService(pool, SimulatedProvider("delay:60"), FAST)
    assert (await before.topup("acct-a", parse_amount("5"), "k")).status == "pending"
    # A payment id the provider never made (another provider's, a lost record): it
    # must never be answered by a payment of the provider's own.
    await pool.execute("UPDATE topup_payments SET payment_id = 'simpay_000001'")
    after = TopupService(pool, SimulatedProvider("succeed"), FAST)
    assert (await after.topup("acct-b", parse_amount("7"), "k")).status == "succeeded"
    await asyncio.sleep(0.2)
    with caplog.at_level(logging.DEBUG, logger="rating.stores.topups"):
        assert await after.settle_pending() == 0
        await asyncio.sleep(0.2)
        assert await after.settle_pending() == 0  # not asked again at every poll
    row = await pool.fetchrow("SELECT * FROM topup_payments WHERE account_id = 'acct-a'")
    assert (row["status"], row["failures"]) == ("pending", 1)
    assert row["last_error"].startswith("unknown_payment")
    assert after.settle_failures == 1
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    balances = dict(await pool.fetch("SELECT id, balance FROM accounts"))
    assert balances == {"acct-a": 0, "acct-b": parse_amount("7")}


async def test_a_delayed_payment_made_by_another_process_is_credited_once_when_due(
        pool: asyncpg.Pool) -> None:
    await AccountStore(pool).create(NewAccount("acct-a", "standard", "EUR"))
    # The command line pays (its own provider), then exits; the engine settles it.
    command_line = TopupService(pool, SimulatedProvider("delay:0.5"), FAST)
    assert (await command_line.topup("acct-a", parse_amount("5"), "k")).status == "pending"
    engine = TopupService(pool, SimulatedProvider("succeed"), FAST)
    await asyncio.sleep(0.2)
    assert await engine.settle_pending() == 0  # not due yet: still pending
    await asyncio.sleep(0.5)
    assert await engine.settle_pending() == 1
    await asyncio.sleep(0.2)
    assert await engine.settle_pending() == 0
    assert await pool.fetchval("SELECT balance FROM accounts") == parse_amount("5")
    assert await pool.fetchval("SELECT status FROM topup_payments") == "succeeded"


async def test_a_reload_that_drops_a_plan_accounts_are_on_is_refused(
        pool: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tariffs = Path(shutil.copytree(REPO / "tests" / "fixtures" / "tariffs", tmp_path / "t"))
    await AccountStore(pool).create(NewAccount("acct-us", "us-business", "USD"))
    store = TariffStore(tariffs)

    async def in_use() -> dict[str, frozenset[str]]:
        async with pool.acquire() as conn:
            return dict(await plans_in_use(conn))  # type: ignore[arg-type]

    watcher = TariffWatcher(store, 60, plans_in_use=in_use)
    (tariffs / "plans" / "us-business.toml").unlink()
    with caplog.at_level(logging.INFO, logger="consumers.tariff_watcher"):
        result = await watcher.reload_now(force=False)
    assert result is not None and not result.ok
    assert "us-business" in store.book.plan_ids()  # the book in force is kept
    assert metric("rating_tariff_last_reload_success") == 0
    assert any("'us-business' is removed" in r.getMessage() for r in caplog.records)
    # Once nobody is on it, the plan may go.
    await pool.execute("UPDATE accounts SET plan_id = 'standard', currency = 'EUR'")
    result = await watcher.reload_now()
    assert result is not None and result.ok
    assert "us-business" not in store.book.plan_ids()
    assert metric("rating_tariff_last_reload_success") == 1

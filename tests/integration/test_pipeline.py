"""The deduction pipeline against real PostgreSQL and broker: Kafka -> rate -> debit, once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from jsonschema import Draft202012Validator
from prometheus_client import REGISTRY

from consumers.outbox_relay import OutboxRelay
from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from tests.support import (
    REPO,
    create_topics,
    ledger_explains_balances,
    publish_with_librdkafka,
    read_topic,
    running_consumer,
    usage_event,
    wait_until,
    write_flat_tariffs,
)

GB_LANDLINE = "+442071234567"
GB_MOBILE = "+447400123456"
GB_TOLLFREE = "+448001234567"


@pytest.fixture
def tariffs_dir(tmp_path: Path) -> Path:
    return write_flat_tariffs(tmp_path / "tariffs")


@pytest.fixture
async def env(settings: Settings, tariffs_dir: Path, kafka_bootstrap: str) -> Settings:
    configured = replace(settings, tariffs_dir=tariffs_dir, batch_max_events=500)
    await create_topics(configured, kafka_bootstrap)
    return configured


async def make_account(pool: asyncpg.Pool, account_id: str, balance: str,
                       threshold: str = "0") -> None:
    await AccountStore(pool).create(NewAccount(account_id, "flat", "EUR", parse_amount(balance),
                                               parse_amount(threshold)))


async def balance_of(pool: asyncpg.Pool, account_id: str) -> int:
    value: int = await pool.fetchval("SELECT balance FROM accounts WHERE id = $1", account_id)
    return value


async def ledger_count(pool: asyncpg.Pool) -> int:
    value: int = await pool.fetchval("SELECT count(*) FROM ledger")
    return value


def call(event_id: str, account: str, dest: str, from_s: int, to_s: int, **kw: object) -> bytes:
    return usage_event("usage.call", event_id, account,
                       {"call_id": "c-1", "destination": dest, "from_s": from_s, "to_s": to_s,
                        **kw})


async def test_every_service_is_debited_exactly_as_the_tariff_says(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1", "10.00")
    await make_account(pool, "acct-2", "10.00")
    events = [
        # a 125 s landline call in three events: 3 started minutes at 0.10
        call("e1", "acct-1", GB_LANDLINE, 0, 60),
        call("e2", "acct-1", GB_LANDLINE, 60, 120),
        call("e3", "acct-1", GB_LANDLINE, 120, 125, final=True),
        # mobile prefix row overrides: 0.05 connect + 30/6 increment at 0.30/min, 40 s
        # -> billable 30 + 12 = 42 s -> 0.05 + 0.30 * 42 / 60 = 0.26
        call("e4", "acct-2", GB_MOBILE, 0, 40, final=True),
        usage_event("usage.sms", "e5", "acct-2",
                    {"message_id": "m1", "destination": GB_MOBILE, "segments": 3}),
        # 161 GSM-7 characters: two segments
        usage_event("usage.sms", "e6", "acct-2",
                    {"message_id": "m2", "destination": "+33612345678", "text": "x" * 161}),
        # STT 61 s at 15/15: 75 s of 0.024/min = 0.03
        usage_event("usage.stt", "e7", "acct-1", {"job_id": "j1", "seconds": 61}),
        usage_event("usage.tollfree", "e8", "acct-1",
                    {"call_id": "t1", "tollfree_number": GB_TOLLFREE, "direction": "inbound",
                     "from_s": 0, "to_s": 90, "final": True}),
        # the same event again, in the same stream: charged once
        call("e1", "acct-1", GB_LANDLINE, 0, 60),
    ]
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic,
                            [(e_acct, e) for e_acct, e in zip(
                                ["acct-1"] * 3 + ["acct-2"] * 3 + ["acct-1"] * 3, events,
                                strict=True)])
    async with running_consumer(env, pool):
        await wait_until(lambda: _ledger_has(pool, 8), what="8 ledger rows")
    # acct-1: 0.30 (call) + 0.03 (stt) + 0.04 (toll-free 2 min inbound)
    assert await balance_of(pool, "acct-1") == parse_amount("10.00") - parse_amount("0.37")
    # acct-2: 0.26 (mobile) + 0.15 (3 SMS GB) + 0.14 (2 SMS FR)
    assert await balance_of(pool, "acct-2") == parse_amount("10.00") - parse_amount("0.55")
    rows = await pool.fetch("SELECT event_id, service, country, amount FROM ledger"
                            " ORDER BY event_id")
    assert [(r["event_id"], r["service"], r["country"]) for r in rows] == [
        ("e1", "call", "GB"), ("e2", "call", "GB"), ("e3", "call", "GB"),
        ("e4", "call", "GB"), ("e5", "sms", "GB"), ("e6", "sms", "FR"),
        ("e7", "stt", None), ("e8", "tollfree", "GB")]
    assert await ledger_explains_balances(pool) == []


async def _ledger_has(pool: asyncpg.Pool, n: int) -> bool:
    return await ledger_count(pool) >= n


async def test_redelivery_across_restarts_and_groups_is_charged_once(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1", "5.00")
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("acct-1", call(f"r{i}", "acct-1", GB_LANDLINE, 0, 60)) for i in range(20)])
    async with running_consumer(env, pool):
        await wait_until(lambda: _ledger_has(pool, 20), what="20 ledger rows")
    after_first = await balance_of(pool, "acct-1")
    assert after_first == parse_amount("5.00") - 20 * parse_amount("0.10")
    # A new consumer group reads everything again from the earliest offset, and the
    # same events published again arrive as new messages: nothing changes.
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("acct-1", call(f"r{i}", "acct-1", GB_LANDLINE, 0, 60)) for i in range(20)])
    again = replace(env, consumer_group=env.consumer_group + "-again")
    duplicates_before = _duplicates()
    async with running_consumer(again, pool):
        await wait_until(lambda: _duplicates_seen(duplicates_before + 40),
                         what="40 duplicates seen")
    assert await balance_of(pool, "acct-1") == after_first
    assert await ledger_count(pool) == 20


def _duplicates() -> float:
    return REGISTRY.get_sample_value("rating_events_duplicate_total") or 0.0


async def _duplicates_seen(n: float) -> bool:
    return _duplicates() >= n


async def test_bad_events_go_to_the_dlq_with_reasons_and_the_rest_is_applied(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1", "5.00")
    bad = [
        (b'{"specversion": "1.0", "id": "x', "invalid_json"),
        (usage_event("usage.call", "b2", "acct-1", {"call_id": "c", "destination": GB_LANDLINE,
                                                    "from_s": 60, "to_s": 30}),
         "invalid_event"),
        (usage_event("usage.fax", "b3", "acct-1", {}), "unknown_type"),
        (call("b4", "acct-1", "+8823401234567", 0, 60), "no_rate"),
        (call("b5", "acct-nobody", GB_LANDLINE, 0, 60), "unknown_account"),
        (call("b6", "acct-1", "+4930123456", 0, 60), "no_rate"),  # DE not in the deck
        # Keys PostgreSQL cannot store, and a price no bigint balance should take.
        (call("b7\u0000", "acct-1", GB_LANDLINE, 0, 60), "invalid_event"),
        (call("b8" * 200, "acct-1", GB_LANDLINE, 0, 60), "invalid_event"),
        (call("b9", "acct-1", GB_LANDLINE, 0, 2**63 - 1), "charge_too_large"),
    ]
    good = [call(f"g{i}", "acct-1", GB_LANDLINE, 0, 30) for i in range(10)]
    stream = [("acct-1", e) for e in good[:5]] + [("acct-1", e) for e, _ in bad] + \
             [("acct-1", e) for e in good[5:]]
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, stream)
    async with running_consumer(env, pool):
        await wait_until(lambda: _ledger_has(pool, 10), what="10 good events")
        dlq = await read_topic(kafka_bootstrap, env.dlq_topic, len(bad))
    assert await balance_of(pool, "acct-1") == parse_amount("5.00") - parse_amount("1.00")
    by_value = {m.value: m for m in dlq}
    assert len(dlq) == len(bad)
    for raw, code in bad:
        message = by_value[raw]  # the original bytes, unchanged
        headers = {k: v.decode() for k, v in message.headers}
        assert headers["error_code"] == code, headers
        assert headers["error"]
        assert headers["source_topic"] == env.usage_topic
        assert int(headers["source_offset"]) >= 0
        assert message.key == b"acct-1"


async def outbox_types(pool: asyncpg.Pool, account_id: str) -> list[str]:
    rows = await pool.fetch("SELECT type FROM outbox WHERE account_id = $1 ORDER BY seq",
                            account_id)
    return [r["type"] for r in rows]


async def test_one_low_balance_event_per_crossing(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1", "1.00", threshold="0.55")
    store = AccountStore(pool)

    async def debit(ids: list[str]) -> None:
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
            ("acct-1", call(i, "acct-1", GB_LANDLINE, 0, 60)) for i in ids])
        await wait_until(lambda: _has_ids(pool, ids), what=f"{ids} applied")

    async with running_consumer(env, pool):
        await debit([f"a{i}" for i in range(4)])   # 1.00 -> 0.60: above
        assert await outbox_types(pool, "acct-1") == []
        await debit(["a4"])                        # 0.50: crossed
        assert await outbox_types(pool, "acct-1") == ["balance.low"]
        await debit(["a5", "a6"])                  # 0.30: still below, nothing new
        assert await outbox_types(pool, "acct-1") == ["balance.low"]
        await store.credit("acct-1", kind="topup", source="topup", key="k1",
                           amount=parse_amount("1.00"))       # 1.30: recovered
        await debit([f"b{i}" for i in range(8)])    # 0.50: crossed again
        await debit([f"c{i}" for i in range(6)])    # -0.10: exhausted
    assert await outbox_types(pool, "acct-1") == [
        "balance.low", "topup.credited", "balance.recovered", "balance.low",
        "balance.exhausted"]
    assert await balance_of(pool, "acct-1") == parse_amount("-0.10")  # usage is never lost
    assert await ledger_explains_balances(pool) == []


async def _has_ids(pool: asyncpg.Pool, ids: list[str]) -> bool:
    n = await pool.fetchval("SELECT count(*) FROM ledger WHERE event_id = ANY($1)", ids)
    return bool(n == len(ids))


async def test_stt_on_invoice_accrues_instead_of_debiting(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1", "1.00")
    await AccountStore(pool).set_stt_billing("acct-1", "invoice")
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("acct-1", usage_event("usage.stt", "s1", "acct-1", {"job_id": "j", "seconds": 600})),
        ("acct-1", call("s2", "acct-1", GB_LANDLINE, 0, 60))])
    async with running_consumer(env, pool):
        await wait_until(lambda: _ledger_has(pool, 2), what="2 rows")
    assert await balance_of(pool, "acct-1") == parse_amount("0.90")
    row = await pool.fetchrow("SELECT kind, amount, accrued FROM ledger WHERE event_id = 's1'")
    assert (row["kind"], row["amount"], row["accrued"]) == ("invoice", 0, parse_amount("0.24"))


async def test_an_account_changed_while_the_consumer_runs_is_rated_as_it_is_now(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    # A change to an account (its speech-to-text billing, its plan) applies from the
    # next event on, with the consumer running; nothing may keep the old values.
    await make_account(pool, "acct-1", "1.00")
    stt = [("acct-1", usage_event("usage.stt", f"s{i}", "acct-1", {"job_id": "j",
                                                                    "seconds": 600}))
           for i in (1, 2)]
    async with running_consumer(env, pool):
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, stt[:1])
        await wait_until(lambda: _ledger_has(pool, 1), what="the first STT event")
        await AccountStore(pool).set_stt_billing("acct-1", "invoice")
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, stt[1:])
        await wait_until(lambda: _ledger_has(pool, 2), what="the second STT event")
        await pool.execute("UPDATE accounts SET plan_id = 'retired' WHERE id = 'acct-1'")
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
            ("acct-1", call("c1", "acct-1", GB_LANDLINE, 0, 60))])
        dlq = await read_topic(kafka_bootstrap, env.dlq_topic, 1)
    rows = await pool.fetch("SELECT event_id, kind, amount, accrued FROM ledger"
                            " ORDER BY event_id")
    assert [(r["event_id"], r["kind"], r["amount"], r["accrued"]) for r in rows] == [
        ("s1", "usage", -parse_amount("0.24"), 0),
        ("s2", "invoice", 0, parse_amount("0.24"))]
    assert [dict(m.headers)["error_code"] for m in dlq] == [b"unknown_plan"]
    assert await balance_of(pool, "acct-1") == parse_amount("0.76")
    assert await ledger_explains_balances(pool) == []


async def test_relayed_balance_events_match_their_schema_and_keep_their_ids(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1", "0.30", threshold="0.25")
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("acct-1", call(f"x{i}", "acct-1", GB_LANDLINE, 0, 60)) for i in range(4)])
    async with running_consumer(env, pool):
        await wait_until(lambda: _ledger_has(pool, 4), what="4 rows")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        relay = OutboxRelay(pool, producer, env.balance_topic)
        assert await relay.relay_once() == 2
        assert await relay.relay_once() == 0  # marked sent: never published twice
    finally:
        await producer.stop()
    messages = await read_topic(kafka_bootstrap, env.balance_topic, 2)
    schema = orjson.loads((REPO / "schemas" / "balance.event.json").read_bytes())
    events = [orjson.loads(m.value) for m in messages]
    for event, message in zip(events, messages, strict=True):
        Draft202012Validator(schema).validate(event)
        assert message.key == b"acct-1"
    assert sorted(e["type"] for e in events) == ["balance.exhausted", "balance.low"]
    ids = await pool.fetch("SELECT event_id FROM outbox ORDER BY seq")
    assert sorted(e["id"] for e in events) == sorted(r["event_id"] for r in ids)
    low = next(e for e in events if e["type"] == "balance.low")
    assert low["data"] == {"account_id": "acct-1", "balance": "-0.100000",
                           "threshold": "0.250000", "currency": "EUR", "version": 1}

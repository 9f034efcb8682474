"""Explaining charges against real PostgreSQL and broker: the rated detail of every ledger
row, ``events show``, ``dlq list``, ``publish`` and ``dlq replay`` (CONTRACT §11, §13)."""

from __future__ import annotations

import functools
import io
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from api.accounts import HttpApi
from commands.events import cmd_dlq_list, cmd_dlq_replay, cmd_events_show, cmd_publish
from consumers.dlq_reader import find_in_dlq
from rating.core.errors import CommandError, RequestError
from rating.core.money import parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.explain import ENTRY_COLUMNS, detail_of
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore
from tests.integration.test_http_api import assert_matches
from tests.pricing_rule import billed_seconds, reprice
from tests.support import (
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
GB_MOBILE = "+447400123456"  # the flat plan's 447 prefix row: own fee, 30/6
GB_TOLLFREE = "+448001234567"
DE_LANDLINE = "+4930123456"  # not in the flat plan until a test adds it
TOKEN = "op-token"


@pytest.fixture
def tariffs_dir(tmp_path: Path) -> Path:
    return write_flat_tariffs(tmp_path / "tariffs")


@pytest.fixture
async def env(settings: Settings, tariffs_dir: Path, kafka_bootstrap: str) -> Settings:
    configured = replace(settings, tariffs_dir=tariffs_dir, batch_max_events=500)
    await create_topics(configured, kafka_bootstrap)
    return configured


async def make_account(pool: asyncpg.Pool, account_id: str, balance: str = "10.00") -> None:
    await AccountStore(pool).create(NewAccount(account_id, "flat", "EUR", parse_amount(balance)))


def call(event_id: str, account: str, dest: str, from_s: int, to_s: int,
         call_id: str = "c-1") -> bytes:
    return usage_event("usage.call", event_id, account,
                       {"call_id": call_id, "destination": dest, "from_s": from_s, "to_s": to_s})


async def ledger_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger"))


async def has_rows(pool: asyncpg.Pool, n: int) -> bool:
    return await ledger_count(pool) >= n


async def balance_of(pool: asyncpg.Pool, account_id: str) -> int:
    return int(await pool.fetchval("SELECT balance FROM accounts WHERE id = $1", account_id))


async def show(settings: Settings, source: str, event_id: str) -> dict[str, object]:
    out = io.StringIO()
    assert await cmd_events_show(settings, out, source, event_id) == 0
    answer: dict[str, object] = orjson.loads(out.getvalue())
    return answer


async def test_a_disputed_charge_is_explained_by_its_ledger_row_alone(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1")
    await make_account(pool, "acct-2")
    await AccountStore(pool).set_stt_billing("acct-2", "invoice")
    events = [
        call("e1", "acct-1", GB_LANDLINE, 0, 60, "c-a"),   # country row, first minute
        call("e2", "acct-1", GB_LANDLINE, 60, 125, "c-a"),  # the rest of the same call
        call("e3", "acct-1", GB_MOBILE, 0, 40, "c-b"),     # prefix 447: fee and 30/6
        call("e4", "acct-1", GB_MOBILE, 40, 41, "c-b"),
        call("e5", "acct-1", "+33612345678", 0, 1, "c-c"),
        usage_event("usage.tollfree", "e6", "acct-1",
                    {"call_id": "t-1", "tollfree_number": GB_TOLLFREE, "direction": "inbound",
                     "from_s": 0, "to_s": 90}),
        usage_event("usage.tollfree", "e7", "acct-1",
                    {"call_id": "t-2", "tollfree_number": GB_TOLLFREE, "direction": "outbound",
                     "from_s": 30, "to_s": 200}),
        usage_event("usage.sms", "e8", "acct-1",
                    {"message_id": "m-1", "destination": GB_MOBILE, "segments": 3}),
        usage_event("usage.sms", "e9", "acct-1",
                    {"message_id": "m-2", "destination": "+33612345678", "text": "ж" * 71}),
        usage_event("usage.stt", "e10", "acct-1", {"job_id": "j-1", "seconds": 61}),
        usage_event("usage.stt", "e11", "acct-2", {"job_id": "j-2", "seconds": 601}),
    ]
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic,
                            [(orjson.loads(e)["subject"], e) for e in events])
    async with running_consumer(env, pool):
        await wait_until(lambda: has_rows(pool, len(events)), what="every event billed")
    rows = await pool.fetch(f"SELECT {ENTRY_COLUMNS} FROM ledger ORDER BY entry_id")
    assert {r["service"] for r in rows} == {"call", "tollfree", "sms", "stt"}
    for row in rows:
        detail = detail_of(row)
        assert detail is not None
        price = row["accrued"] if row["kind"] == "invoice" else -row["amount"]
        # The row alone says what priced it: priced again by §4, it is the amount billed.
        assert reprice(row["service"], detail) == Decimal(price) / 1_000_000, row["event_id"]
        assert detail["effective_from"] == "2026-01-01T00:00:00Z"
        if row["service"] != "sms":
            assert detail["billed_seconds"] == billed_seconds(row["service"], detail)
    by_id: dict[str, Any] = {r["event_id"]: detail_of(r) for r in rows}
    assert by_id["e3"] == {
        "destination": GB_MOBILE, "call_id": "c-b", "from_s": 0, "to_s": 40,
        "billed_seconds": 42, "rate": "0.300000", "connect_fee": "0.050000",
        "increment": "30/6", "prefix": "447", "country": "GB",
        "effective_from": "2026-01-01T00:00:00Z"}
    assert (by_id["e1"]["prefix"], by_id["e1"]["country"]) == (None, "GB")
    assert by_id["e7"]["tollfree_number"] == GB_TOLLFREE
    assert by_id["e7"]["direction"] == "outbound"
    assert (by_id["e9"]["segments"], by_id["e9"]["rate"]) == (2, "0.070000")
    assert (by_id["e11"]["job_id"], by_id["e11"]["billed_seconds"]) == ("j-2", 615)
    assert await ledger_explains_balances(pool) == []


async def test_events_show_an_applied_a_duplicate_and_a_refused_event(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1", "1.00")
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("acct-1", call("evt-1", "acct-1", GB_MOBILE, 0, 40)),
        ("acct-9", call("evt-2", "acct-9", GB_LANDLINE, 0, 60)),
        ("acct-1", call("evt-3", "acct-1", DE_LANDLINE, 0, 60))])
    async with running_consumer(env, pool):
        await wait_until(lambda: has_rows(pool, 1), what="evt-1 billed")
        await read_topic(kafka_bootstrap, env.dlq_topic, 2)
        # The same event again, later: the ledger keeps one row, charged once.
        before = duplicates()
        publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
            ("acct-1", call("evt-1", "acct-1", GB_MOBILE, 0, 40))])
        await wait_until(lambda: duplicates_seen(before + 1), what="the duplicate read")
    applied = await show(env, "switch-test-1", "evt-1")
    assert applied == {
        "status": "applied", "account_id": "acct-1", "service": "call", "amount": "0.260000",
        "currency": "EUR", "kind": "usage", "billing": "credit", "country": "GB",
        "plan": "flat", "reason": None, "event_time": "2026-11-25T10:00:00Z",
        "entry_id": applied["entry_id"], "recorded_at": applied["recorded_at"],
        "detail": {"destination": GB_MOBILE, "call_id": "c-1", "from_s": 0, "to_s": 40,
                   "billed_seconds": 42, "rate": "0.300000", "connect_fee": "0.050000",
                   "increment": "30/6", "prefix": "447", "country": "GB",
                   "effective_from": "2026-01-01T00:00:00Z"}}
    assert await ledger_count(pool) == 1
    assert await balance_of(pool, "acct-1") == parse_amount("0.74")
    refused = await show(env, "switch-test-1", "evt-2")
    assert refused["status"] == "refused" and refused["error_code"] == "unknown_account"
    assert "acct-9" in str(refused["error"]) and isinstance(refused["offset"], int)
    no_rate = await show(env, "switch-test-1", "evt-3")
    assert (no_rate["status"], no_rate["error_code"]) == ("refused", "no_rate")
    assert refused["offset"] != no_rate["offset"]
    assert await show(env, "switch-test-1", "evt-404") == {"status": "not_found"}
    assert await show(env, "other-switch", "evt-1") == {"status": "not_found"}
    with pytest.raises(RequestError):  # a key no event can have: one line, no query
        await cmd_events_show(env, io.StringIO(), "s", "x\x00")

    # The same answers over HTTP, for the operator.
    api = HttpApi(store=AccountStore(pool), tariffs=TariffStore(env.tariffs_dir),
                  topups=TopupService(pool, SimulatedProvider()),
                  settings=replace(env, api_token=TOKEN, http_host="127.0.0.1"),
                  readiness=_ready,
                  dlq_search=functools.partial(find_in_dlq, kafka_bootstrap, env.dlq_topic))
    async with api, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        base = f"http://127.0.0.1:{api.port}/v1/events"
        for event_id, expected in (("evt-1", applied), ("evt-2", refused),
                                   ("evt-404", {"status": "not_found"})):
            async with http.get(f"{base}/switch-test-1/{event_id}") as response:
                assert response.status == 200
                assert await response.json() == expected
            assert_matches(expected, "EventExplanation")
        async with http.get(f"{base}/switch-test-1/x%00") as response:
            assert response.status == 400
        # The account's ledger shows the same detail beside each usage row.
        async with http.get(f"http://127.0.0.1:{api.port}/v1/accounts/acct-1/ledger"
                            ) as response:
            ledger = await response.json()
            assert_matches(ledger, "Ledger")
            (entry,) = ledger["entries"]
            assert (entry["event_id"], entry["plan"]) == ("evt-1", "flat")
            assert entry["detail"] == applied["detail"]
        async with http.get(f"{base}/switch-test-1/evt-1",
                            headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401


async def _ready() -> dict[str, bool]:
    return {"postgresql": True}


def duplicates() -> float:
    return REGISTRY.get_sample_value("rating_events_duplicate_total") or 0.0


async def duplicates_seen(n: float) -> bool:
    return duplicates() >= n


async def test_dlq_list_after_a_bad_batch(env: Settings, pool: asyncpg.Pool,
                                          kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1")
    bad = [
        (b'{"specversion": "1.0", "id": "broken', None, "invalid_json"),
        (usage_event("usage.fax", "b2", "acct-1", {}), "b2", "unknown_type"),
        (call("b3", "acct-1", GB_LANDLINE, 60, 30), "b3", "invalid_event"),
        (call("b4", "acct-nobody", GB_LANDLINE, 0, 60), "b4", "unknown_account"),
        (call("b5", "acct-1", DE_LANDLINE, 0, 60), "b5", "no_rate"),
    ]
    good = [call(f"g{i}", "acct-1", GB_LANDLINE, 0, 30) for i in range(4)]
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic,
                            [("acct-1", e) for e in good[:2]]
                            + [("acct-1", raw) for raw, _, _ in bad]
                            + [("acct-1", e) for e in good[2:]])
    async with running_consumer(env, pool):
        await wait_until(lambda: has_rows(pool, len(good)), what="the good events")
        await read_topic(kafka_bootstrap, env.dlq_topic, len(bad))
    out = io.StringIO()
    assert await cmd_dlq_list(env, out, None, None) == 0
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert sorted((line["id"] or "", line["error_code"]) for line in lines) == sorted(
        (event_id or "", code) for _, event_id, code in bad)
    for line in lines:
        assert set(line) >= {"id", "source", "subject", "error_code", "error", "offset", "time"}
        assert line["error"] and line["time"].endswith("Z")
        if line["id"] is not None:
            assert (line["source"], line["subject"]) == (
                "switch-test-1", "acct-nobody" if line["id"] == "b4" else "acct-1")
    assert len({line["offset"] for line in lines}) == len(bad)
    out = io.StringIO()
    await cmd_dlq_list(env, out, ["no_rate", "unknown_account"], None)
    assert sorted(orjson.loads(line)["id"] for line in out.getvalue().splitlines()) == [
        "b4", "b5"]
    out = io.StringIO()
    await cmd_dlq_list(env, out, None, "2999-01-01T00:00:00Z")
    assert out.getvalue() == ""
    out = io.StringIO()
    await cmd_dlq_list(env, out, None, "2000-01-01")
    assert len(out.getvalue().splitlines()) == len(bad)
    with pytest.raises(CommandError, match="--since"):
        await cmd_dlq_list(env, io.StringIO(), None, "yesterday")


async def test_publish_then_events_show_round_trip(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    await make_account(pool, "acct-1")
    lines = [
        call("p1", "acct-1", GB_LANDLINE, 0, 60),
        b"",
        b'{"specversion": "1.0", "id": "p2"',  # line 3: not JSON
        usage_event("usage.sms", "p3", "acct-1",
                    {"message_id": "m", "destination": GB_MOBILE, "segments": 2}),
        call("p4", "acct-1", GB_LANDLINE, 60, 30),  # line 5: to_s before from_s
    ]
    out, err = io.StringIO(), io.StringIO()
    code = await cmd_publish(env, out, err, None, io.BytesIO(b"\n".join(lines) + b"\n"))
    assert code == 1  # two lines failed; the others were published all the same
    published = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(p["line"], p["id"], p["subject"]) for p in published] == [
        (1, "p1", "acct-1"), (4, "p3", "acct-1")]
    assert all(isinstance(p["offset"], int) for p in published)
    errors = err.getvalue().splitlines()
    assert errors[0].startswith("stdin:3: invalid_json: ")
    assert errors[1].startswith("stdin:5: invalid_event: data.from_s/to_s")
    assert errors[-1] == f"published 2 of 4 events to {env.usage_topic}"
    records = await read_topic(kafka_bootstrap, env.usage_topic, 2)
    assert sorted((r.key, r.value) for r in records) == sorted(
        [(b"acct-1", lines[0]), (b"acct-1", lines[3])])  # keyed by subject, bytes unchanged
    async with running_consumer(env, pool):
        await wait_until(lambda: has_rows(pool, 2), what="both published events billed")
    assert (await show(env, "switch-test-1", "p1"))["amount"] == "0.100000"
    sms = await show(env, "switch-test-1", "p3")
    assert (sms["status"], sms["service"], sms["amount"]) == ("applied", "sms", "0.100000")

    file = env.data_dir / "events.jsonl"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(call("p5", "acct-1", GB_LANDLINE, 0, 1) + b"\n")
    out, err = io.StringIO(), io.StringIO()
    assert await cmd_publish(env, out, err, file) == 0
    assert orjson.loads(out.getvalue())["id"] == "p5"


async def test_replay_bills_cured_events_exactly_once_replayed_twice(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tariffs_dir: Path) -> None:
    await make_account(pool, "acct-1", "5.00")
    publish_with_librdkafka(kafka_bootstrap, env.usage_topic, [
        ("late-1", call("r1", "late-1", GB_LANDLINE, 0, 60)),   # account created late
        ("acct-1", call("r2", "acct-1", DE_LANDLINE, 0, 60)),   # DE rate added late
        ("ghost", call("r3", "ghost", GB_LANDLINE, 0, 60)),     # never cured
        ("acct-1", call("r4", "acct-1", GB_LANDLINE, 60, 30)),  # invalid: never replayed
        ("acct-1", call("r5", "acct-1", GB_LANDLINE, 0, 60))])
    async with running_consumer(env, pool):
        await wait_until(lambda: has_rows(pool, 1), what="r5 billed")
        await read_topic(kafka_bootstrap, env.dlq_topic, 4)

    async def replay(*args: object) -> dict[str, int]:
        out = io.StringIO()
        assert await cmd_dlq_replay(env, out, *args) == 0  # type: ignore[arg-type]
        answer: dict[str, int] = orjson.loads(out.getvalue())
        return answer

    nothing_cured = {"scanned": 4, "replayed": 0, "still_failing": 3}
    assert await replay(None, None, False) == nothing_cured
    # The cure: the account exists now, and the billing team priced Germany.
    await make_account(pool, "late-1", "5.00")
    calls = tariffs_dir / "rates" / "flat" / "call.csv"
    calls.write_text(calls.read_text() + "DE,,0.50,,\n")
    assert await replay(None, None, True) == {"scanned": 4, "replayed": 2, "still_failing": 1}
    assert await ledger_count(pool) == 1  # a dry run publishes nothing
    # Replayed twice before anything consumes them: both copies reach usage.events.
    assert await replay(None, None, False) == {"scanned": 4, "replayed": 2, "still_failing": 1}
    assert await replay(None, None, False) == {"scanned": 4, "replayed": 2, "still_failing": 1}
    assert await replay(["unknown_account"], None, False) == {
        "scanned": 4, "replayed": 1, "still_failing": 1}
    before = duplicates()
    async with running_consumer(env, pool):
        await wait_until(lambda: has_rows(pool, 3), what="the cured events billed")
        # r1 was sent three times, r2 twice: three copies that change nothing.
        await wait_until(lambda: duplicates_seen(before + 3), what="the copies read")
    rows = await pool.fetch("SELECT event_id, account_id, amount FROM ledger ORDER BY event_id")
    assert [(r["event_id"], r["account_id"], r["amount"]) for r in rows] == [
        ("r1", "late-1", -parse_amount("0.10")), ("r2", "acct-1", -parse_amount("0.50")),
        ("r5", "acct-1", -parse_amount("0.10"))]
    assert await balance_of(pool, "late-1") == parse_amount("4.90")
    assert await balance_of(pool, "acct-1") == parse_amount("4.40")
    # Once billed, a replay has nothing left to send.
    assert await replay(None, None, False) == {"scanned": 4, "replayed": 0, "still_failing": 1}
    assert await replay(None, "2999-01-01T00:00:00Z", False) == {
        "scanned": 0, "replayed": 0, "still_failing": 0}
    assert await ledger_explains_balances(pool) == []



async def test_a_record_cut_in_the_dlq_is_explained_listed_and_replayed_whole(
        env: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tariffs_dir: Path) -> None:
    await make_account(pool, "acct-1", "5.00")
    # 1.2 MB (a switch's debug field): refused (no DE rate), cut in the DLQ topic.
    big = usage_event("usage.call", "big-1", "acct-1", {
        "call_id": "c-big", "destination": DE_LANDLINE, "from_s": 0, "to_s": 60,
        "trace": "x" * 1_200_000})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 5_000_000,
                         "enable.idempotence": False})
    producer.produce(env.usage_topic, value=big, key=b"acct-1")
    assert producer.flush(30) == 0
    tariffs = TariffStore(tariffs_dir)
    async with running_consumer(env, pool, tariffs):  # one consumer throughout: one join
        [cut] = await read_topic(kafka_bootstrap, env.dlq_topic, 1)
        assert len(cut.value) < len(big) and dict(cut.headers)["value_truncated"] == b"true"
        # Read back whole from the overflow store: found, listed with its id, replayable.
        source = orjson.loads(big)["source"]
        answer = await show(env, source, "big-1")
        assert answer["status"] == "refused" and answer["error_code"] == "no_rate"
        out = io.StringIO()
        assert await cmd_dlq_list(env, out, None, None) == 0
        [listed] = [orjson.loads(line) for line in out.getvalue().splitlines()]
        assert (listed["id"], listed["source"], listed["subject"]) == (
            "big-1", source, "acct-1")
        calls = tariffs_dir / "rates" / "flat" / "call.csv"
        calls.write_text(calls.read_text() + "DE,,0.50,,\n")
        assert tariffs.reload().ok  # as the engine's watcher would
        out = io.StringIO()
        assert await cmd_dlq_replay(env, out, None, None, False) == 0
        assert orjson.loads(out.getvalue()) == {
            "scanned": 1, "replayed": 1, "still_failing": 0}
        await wait_until(lambda: has_rows(pool, 1), what="the whole record billed")
    assert await balance_of(pool, "acct-1") == parse_amount("4.50")

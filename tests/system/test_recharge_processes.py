"""Automatic recharge with engines as processes: two engines sweeping one account that lost
its ``balance.low`` and gets recharges smaller than its deficit, and declines configured
by RATING_PAYMENT_SIMULATION and RATING_RECHARGE_RETRY_SECONDS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.embedded import free_port
from rating.core.money import format_amount, parse_amount
from rating.core.rate import Charge
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from rating.stores.recharge_settings import set_max_per_day
from tests.payments_support import debit
from tests.support import (
    create_topics,
    engine_env,
    ledger_explains_balances,
    read_topic,
    wait_until,
)
from tests.system.test_engine_process import run_cli, start_engine, wait_for_log

pytestmark = pytest.mark.system
EUR = parse_amount
# Outcomes of a step that asked the card processor something (one per charge or status call).
PROVIDER_CALLS = ("succeeded", "pending", "declined", "failed", "hard_declined", "unavailable")


async def debit_unannounced(pool: asyncpg.Pool, account_id: str, amount: str) -> None:
    """Usage debited as the usage consumer does, its balance.low lost: marked sent in the
    same transaction, so no relay ever publishes it and no worker ever handles it."""
    charge = Charge("lost-1", "switch-test", account_id, "call", "GB", EUR(amount), "EUR",
                    "standard")
    async with pool.acquire() as conn, conn.transaction():
        await apply_usage(conn, [RatedUsage(charge, datetime.now(UTC), False)])
        await conn.execute("UPDATE outbox SET sent_at = now() WHERE account_id = $1",
                           account_id)


def outcome_total(port: int, outcomes: tuple[str, ...]) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return sum(sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples
               if sample.name == "rating_recharge_outcomes_total"
               and sample.labels.get("outcome") in outcomes)


def stop(engines: list[subprocess.Popen[bytes]], log: Path) -> None:
    for engine in engines:
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
    for engine in engines:
        assert engine.wait(60) == 0, log.read_text()[-3000:]


async def start_two(settings: Settings, tmp_path: Path,
                    ) -> tuple[list[subprocess.Popen[bytes]], list[int], list[Path]]:
    """Two engines of one group, each with its own metrics port, sweeping twice a second."""
    ports = [free_port(), free_port()]
    logs = [tmp_path / "engine-1.log", tmp_path / "engine-2.log"]
    engines = [start_engine(engine_env(replace(settings, metrics_port=port),
                                       RATING_RECHARGE_SWEEP_SECONDS="0.5",
                                       RATING_PAYMENT_SIMULATION="succeed"), log)
               for port, log in zip(ports, logs, strict=True)]
    try:
        for engine, log in zip(engines, logs, strict=True):
            await wait_for_log(log, "rating engine running", engine)
    except BaseException:
        for engine in engines:
            engine.kill()
        raise
    return engines, ports, logs


async def test_two_engines_sweep_a_lost_crossing_above_the_threshold_one_charge_each(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    await create_topics(settings, kafka_bootstrap)
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "standard", "EUR", EUR("10.00"), EUR("5.00")))
    await store.set_auto_recharge("acct-1", amount=EUR("10.00"), below=EUR("5.00"))
    engines, ports, logs = await start_two(settings, tmp_path)
    try:
        await debit_unannounced(pool, "acct-1", "30.00")  # 10 -> -20, three recharges short

        async def above() -> bool:
            return bool(await pool.fetchval(
                "SELECT balance >= low_balance_threshold FROM accounts WHERE id = 'acct-1'"))

        await wait_until(above, timeout_s=90, what="the sweepers' recharges")
        await wait_until(lambda: _nothing_in_flight(pool), what="nothing in flight")
        # Both kept sweeping meanwhile; asked the card processor three times in all.
        calls = [outcome_total(port, PROVIDER_CALLS) for port in ports]
        succeeded = [outcome_total(port, ("succeeded",)) for port in ports]
    finally:
        stop(engines, logs[0])

    assert await pool.fetchval("SELECT balance FROM accounts") == EUR("10.00")
    assert sum(calls) == 3 and sum(succeeded) == 3, (calls, succeeded)
    rows = await pool.fetch("SELECT crossing_id, status, attempt FROM recharges ORDER BY id")
    assert [(r["status"], r["attempt"]) for r in rows] == [("succeeded", 1)] * 3
    assert rows[0]["crossing_id"].endswith(":balance.low")  # the lost crossing's own key
    assert await pool.fetchval("SELECT count(*) FROM ledger WHERE kind = 'recharge'") == 3
    assert await ledger_explains_balances(pool) == []


async def test_the_daily_limit_holds_with_two_engines_under_a_burst(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    await create_topics(settings, kafka_bootstrap)
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "standard", "EUR", EUR("10.00"), EUR("5.00")))
    await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("5.00"))
    await set_max_per_day(pool, "acct-1", 3)
    engines, ports, logs = await start_two(settings, tmp_path)
    try:
        for n in range(12):  # crossing after crossing, announced and relayed by both engines
            now = await pool.fetchval("SELECT balance FROM accounts")
            if now < EUR("6.00"):
                await store.credit("acct-1", kind="adjustment", source="adjustment",
                                   key=f"acct-1/up-{n}", amount=EUR("6.00") - now,
                                   reason="test: back above the threshold")
            await debit(pool, "acct-1", format_amount(
                await pool.fetchval("SELECT balance FROM accounts") - EUR("1.00")))
            await asyncio.sleep(0.3)

        async def limited() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE type = 'recharge.limited'"))

        await wait_until(limited, what="recharge.limited")
        await wait_until(lambda: _nothing_in_flight(pool), what="nothing in flight")
        await asyncio.sleep(2)  # more sweeps by both: nothing more may be charged
        calls = [outcome_total(port, PROVIDER_CALLS) for port in ports]
    finally:
        stop(engines, logs[0])

    assert sum(calls) == 3, calls
    assert [r["status"] for r in await pool.fetch("SELECT status FROM recharges")] == [
        "succeeded"] * 3
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE type = 'recharge.limited'") == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE type = 'balance.low'") >= 6
    assert await ledger_explains_balances(pool) == []


async def _nothing_in_flight(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval(
        "SELECT count(*) FROM recharges WHERE status IN ('requested', 'charging', 'pending')")


@pytest.mark.parametrize(("simulation", "reason", "attempts"), [
    ("decline", "attempts_exhausted", 3),
    ("hard_decline", "hard_decline", 1),
])
async def test_declines_from_the_configured_provider_turn_automatic_recharge_off(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path,
        simulation: str, reason: str, attempts: int) -> None:
    await create_topics(settings, kafka_bootstrap)
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "standard", "EUR", EUR("3.00"), EUR("5.00")))
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(settings, RATING_PAYMENT_SIMULATION=simulation,
                                     RATING_RECHARGE_RETRY_SECONDS="1,1"), log)
    try:
        await wait_for_log(log, "rating engine running", engine)
        await store.set_auto_recharge("acct-1", amount=EUR("20.00"), below=EUR("5.00"))

        async def disabled() -> bool:
            return await pool.fetchval("SELECT auto_recharge_disabled_reason FROM accounts"
                                       " WHERE id = 'acct-1'") is not None

        await wait_until(disabled, what="automatic recharge turned off")
        published = await read_topic(kafka_bootstrap, settings.balance_topic, 2 * attempts + 1)
    finally:
        stop([engine], log)

    account = await store.get("acct-1")
    assert (account.auto_recharge_enabled, account.auto_recharge_disabled_reason) == (
        False, reason)
    failed = await pool.fetch("SELECT created_at FROM outbox WHERE type = 'recharge.failed'"
                              " ORDER BY seq")
    assert len(failed) == attempts
    gaps = [(b["created_at"] - a["created_at"]).total_seconds()
            for a, b in pairwise(failed)]
    assert all(gap >= 1.0 for gap in gaps), gaps  # the configured waits
    events = [orjson.loads(m.value) for m in published]
    [off] = [e for e in events if e["type"] == "recharge.disabled"]
    assert (off["data"]["reason"], off["data"]["attempt"], off["data"]["amount"]) == (
        reason, attempts, "20.000000")
    assert await pool.fetchval("SELECT balance FROM accounts") == EUR("3.00")


def test_a_bad_retry_setting_fails_at_start_up_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update({"RATING_DATA_DIR": str(tmp_path / "data"),
                "RATING_RECHARGE_RETRY_SECONDS": "60,soon"})
    result = run_cli(env, "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "RATING_RECHARGE_RETRY_SECONDS" in errors[0], result.stderr

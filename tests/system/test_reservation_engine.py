"""Reservations against the engine as a process (`rating-engine run`): a voice switch reserves
over HTTP with its own token, then vanishes; the engine's sweeper expires its reservations,
the credit comes back, and the metric counts them. Fifty calls reserved at once share the
credit."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from engine.embedded import free_port
from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from tests.support import (
    create_topics,
    engine_env,
    publish_with_librdkafka,
    usage_event,
    wait_until,
    write_flat_tariffs,
)
from tests.system.test_engine_process import _metric_total, start_engine, wait_for_log

pytestmark = pytest.mark.system
SWITCH = {"Authorization": "Bearer switch-secret"}
CALL = {"source": "switch-eu-1", "service": "call", "destination": "+442071234567"}


async def test_a_vanished_switch_gets_its_credit_back_from_the_running_engine(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    configured = replace(settings, http_port=free_port(), metrics_port=free_port(),
                         tariffs_dir=write_flat_tariffs(tmp_path / "tariffs"))
    await create_topics(configured, kafka_bootstrap)
    # The flat plan: 0.10 per minute, 60/60. 1.00 is ten minutes of calls.
    await AccountStore(pool).create(NewAccount("acct-1", "flat", "EUR", parse_amount("1.00")))
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(
        configured, RATING_SWITCH_TOKEN="switch-secret", RATING_RESERVATION_SECONDS="2",
        RATING_RESERVATION_GRACE_SECONDS="1"), log)
    base = f"http://127.0.0.1:{configured.http_port}/v1/accounts/acct-1"
    try:
        await wait_for_log(log, "rating engine running", engine)
        async with aiohttp.ClientSession() as http:

            async def reserve(n: int) -> tuple[int, dict[str, object]]:
                async with http.post(f"{base}/reservations", json={**CALL, "call_id": f"c-{n}"},
                                     headers=SWITCH) as response:
                    return response.status, await response.json()

            answers = await asyncio.gather(*(reserve(n) for n in range(50)))
            granted = [body for status, body in answers if status == 201]
            assert sorted({status for status, _ in answers}) == [201, 402]
            # Grants of at most 2 s, each holding its first block (a minute, 0.10): the
            # credit covers ten of them, whatever the interleaving.
            assert len(granted) == 10
            assert {(b["granted_seconds"], b["held"]) for b in granted} == {(2, "0.100000")}

            async def available() -> str:
                async with http.get(f"{base}/authorize?service=call&destination=%2B442071234567",
                                    headers=SWITCH) as response:
                    return str((await response.json())["available"])

            assert await available() == "0.000000"

            # The switch is gone: nothing extends, nothing is used, nothing is released.
            async def credit_back() -> bool:
                return await available() == "1.000000"

            await wait_until(credit_back, timeout_s=30, what="the expired holds to be freed")
        assert _metric_total(configured.metrics_port, "rating_reservations_expired_total") == 10
        assert await pool.fetchval(
            "SELECT count(*) FROM reservations WHERE status = 'expired'") == 10
    finally:
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(60)
    assert code == 0, log.read_text()[-3000:]


async def test_api_requests_stuck_in_the_database_never_stall_billing(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    """Thirty reservations wait on one account's row lock, holding every connection the
    API may have; usage of another account is billed meanwhile."""
    configured = replace(settings, http_port=free_port(), metrics_port=free_port(),
                         tariffs_dir=write_flat_tariffs(tmp_path / "tariffs"))
    await create_topics(configured, kafka_bootstrap)
    store = AccountStore(pool)
    for account in ("acct-busy", "acct-calling"):
        await store.create(NewAccount(account, "flat", "EUR", parse_amount("100.00")))
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(configured, RATING_SWITCH_TOKEN="switch-secret"), log)
    base = f"http://127.0.0.1:{configured.http_port}/v1/accounts/acct-busy"
    try:
        await wait_for_log(log, "rating engine running", engine)
        async with pool.acquire() as locker, aiohttp.ClientSession() as http:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM accounts WHERE id = 'acct-busy' FOR UPDATE")

            async def reserve(n: int) -> int:
                async with http.post(f"{base}/reservations", json={**CALL, "call_id": f"c-{n}"},
                                     headers=SWITCH) as response:
                    return response.status

            reserving = [asyncio.create_task(reserve(n)) for n in range(30)]

            async def waiting_on_the_lock() -> bool:
                return int(await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%reservation_open%'")) >= 10

            await wait_until(waiting_on_the_lock, timeout_s=30,
                             what="the API's connections to wait on the lock")
            publish_with_librdkafka(kafka_bootstrap, configured.usage_topic, [(
                "acct-calling", usage_event("usage.call", "e-1", "acct-calling", {
                    "call_id": "call-1", "destination": "+442071234567",
                    "from_s": 0, "to_s": 60}))])

            async def billed() -> bool:
                return bool(await pool.fetchval(
                    "SELECT count(*) FROM ledger WHERE account_id = 'acct-calling'"))

            await wait_until(billed, timeout_s=30, what="the usage to be billed")
            assert not any(task.done() for task in reserving)  # still waiting on the lock
            await lock.rollback()
            assert sorted(set(await asyncio.gather(*reserving))) == [201]
    finally:
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(60)
    assert code == 0, log.read_text()[-3000:]

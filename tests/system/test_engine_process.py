"""The engine as a process: crashes, graceful shutdown, embedded services, bad configuration."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import asyncpg
import orjson
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.embedded import free_port
from rating.core.events import decode_usage_event
from rating.core.money import parse_amount
from rating.core.rate import rate
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.tariffbook.files import load_tariffs
from tests.support import (
    REPO,
    create_topics,
    engine_env,
    ledger_explains_balances,
    publish_with_librdkafka,
    read_topic,
    usage_event,
    wait_until,
)

pytestmark = pytest.mark.system
ENGINE = [sys.executable, "-m", "commands.main"]
DESTINATIONS = ["+442071234567", "+33142685300", "+4930123456", "+12025550123"]


def start_engine(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*ENGINE, *(args or ("run",))], env=env, cwd=REPO,
                                stdout=handle, stderr=handle, stdin=subprocess.DEVNULL)


async def wait_for_log(log: Path, text: str, proc: subprocess.Popen[bytes],
                       timeout_s: float = 60) -> None:
    async def seen() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"engine exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return log.exists() and text in log.read_text(errors="replace")

    await wait_until(seen, timeout_s=timeout_s, what=f"{text!r} in the engine log")


def call_events(prefix: str, accounts: list[str], n: int) -> list[tuple[str, bytes]]:
    """``n`` call events spread over accounts: several calls, one event a minute each."""
    events = []
    for i in range(n):
        account = accounts[i % len(accounts)]
        minute = (i // len(accounts)) % 5
        events.append((account, usage_event(
            "usage.call", f"{prefix}-{i}", account,
            {"call_id": f"{prefix}-call-{i % 97}", "destination": DESTINATIONS[i % 4],
             "from_s": minute * 60, "to_s": minute * 60 + 60})))
    return events


async def expected_debits(settings: Settings, events: list[tuple[str, bytes]],
                          plan: str) -> dict[str, int]:
    book = load_tariffs(settings.tariffs_dir)
    totals: dict[str, int] = {}
    for account, raw in events:
        charge = rate(decode_usage_event(raw), book, plan)
        totals[account] = totals.get(account, 0) + charge.amount
    return totals


async def test_sigkill_mid_stream_then_restart_applies_every_event_exactly_once(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = replace(settings, batch_max_events=200)
    await create_topics(settings, kafka_bootstrap, usage_partitions=4)
    accounts = [f"acct-{i}" for i in range(20)]
    await AccountStore(pool).create_many(
        NewAccount(a, "standard", "EUR", parse_amount("1000")) for a in accounts)
    events = call_events("k", accounts, 6000)
    log = tmp_path / "engine.log"
    env = engine_env(settings, RATING_BATCH_MAX_EVENTS="200")

    engine = start_engine(env, log)
    publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, events[:3000])
    await wait_until(lambda: _applied_at_least(pool, 500), what="some events applied")
    engine.kill()  # SIGKILL: no chance to finish or commit anything
    engine.wait(10)
    applied_at_kill = await pool.fetchval("SELECT count(*) FROM ledger")
    # Published while the engine is down, and the rest of the first half redelivered.
    publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, events[3000:])
    publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, events[:500])  # duplicates

    engine = start_engine(env, log)
    try:
        await wait_until(lambda: _applied_at_least(pool, len(events)), timeout_s=120,
                         what="every event applied")
        await asyncio.sleep(2)  # anything still to come would be a double debit
        assert await pool.fetchval("SELECT count(*) FROM ledger") == len(events)
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(60) == 0, log.read_text()[-3000:]
    assert 0 < applied_at_kill < len(events)
    expected = await expected_debits(settings, events, "standard")
    rows = await pool.fetch("SELECT id, opening_balance - balance AS debited FROM accounts")
    assert {r["id"]: r["debited"] for r in rows} == expected
    assert await ledger_explains_balances(pool) == []


async def _applied_at_least(pool: asyncpg.Pool, n: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM ledger") >= n)


async def test_sigterm_while_starting_stops_at_once_without_finishing_the_start(
        settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> None:
    """A start-up step can wait minutes (a group join held by a member killed a moment
    ago): SIGTERM does not wait for it, and the engine stops cleanly."""
    await create_topics(settings, kafka_bootstrap)
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(settings), log)
    try:
        # Said before the services are reached; the group join alone takes seconds more.
        await wait_for_log(log, "rating engine starting", engine)
        started = time.monotonic()
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(30)
        took = time.monotonic() - started
    finally:
        if engine.poll() is None:
            engine.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "rating engine running" not in text  # start-up was abandoned, not finished
    assert "rating engine stopped cleanly" in text
    assert took < 15, text[-3000:]


async def test_sigterm_finishes_the_batch_commits_and_exits_zero(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    await create_topics(settings, kafka_bootstrap)
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("50")))
    events = call_events("t", ["acct-1"], 400)
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(settings), log)
    try:
        await wait_for_log(log, "rating engine running", engine)
        publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, events)
        await wait_until(lambda: _applied_at_least(pool, 400), what="all applied")
    finally:
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(60)
    assert code == 0, log.read_text()[-3000:]
    assert "rating engine stopped cleanly" in log.read_text()
    # Offsets were committed: a new engine in the same group reads nothing again.
    port = free_port()
    engine = start_engine(engine_env(replace(settings, metrics_port=port)), log)
    try:
        await wait_for_log(log, "rating engine running", engine)
        await asyncio.sleep(6)  # group join plus a few polls
        consumed = _metric_total(port, "rating_events_consumed_total")
        # The event loop's lag is sampled while it runs (four times a second).
        loop_samples = _metric_total(port, "rating_event_loop_lag_seconds_count")
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(60) == 0
    assert consumed == 0
    assert loop_samples >= 10
    assert await pool.fetchval("SELECT count(*) FROM ledger") == 400


async def test_a_replay_right_after_a_tariff_fix_waits_for_the_engine_and_bills_once(
        settings: Settings, pool: asyncpg.Pool, kafka_bootstrap: str, tmp_path: Path) -> None:
    tariffs = Path(shutil.copytree(settings.tariffs_dir, tmp_path / "tariffs"))
    settings = replace(settings, tariffs_dir=tariffs)
    await create_topics(settings, kafka_bootstrap)
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", parse_amount("5")))
    log = tmp_path / "engine.log"
    # The engine would see the fix only in a minute: it reloads when told to (SIGHUP).
    env = engine_env(settings, RATING_TARIFF_POLL_SECONDS="60")
    engine = start_engine(env, log)
    try:
        await wait_for_log(log, "rating engine running", engine)
        publish_with_librdkafka(kafka_bootstrap, settings.usage_topic, [("acct-1", usage_event(
            "usage.sms", "sn-1", "acct-1",
            {"message_id": "m-1", "destination": "+221771234567", "segments": 1}))])
        [refused] = await read_topic(kafka_bootstrap, settings.dlq_topic, 1)
        assert dict(refused.headers)["error_code"] == b"no_rate"
        sms = tariffs / "rates" / "standard" / "sms.csv"
        sms.write_text(sms.read_text() + "SN,0.0310\n")  # the billing team prices Senegal
        said = tmp_path / "replay.err"
        with said.open("wb") as err:
            replay = subprocess.Popen([*ENGINE, "dlq", "replay"], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=err)

        async def waiting() -> bool:
            return b"waiting for the running engines to load" in said.read_bytes()

        await wait_until(waiting, what="the replay waiting for the engine")
        engine.send_signal(signal.SIGHUP)  # the engine loads the fix; the replay goes on
        stdout, _ = await asyncio.to_thread(replay.communicate, timeout=60)
        assert replay.returncode == 0, said.read_text()
        assert orjson.loads(stdout) == {"scanned": 1, "replayed": 1, "still_failing": 0}
        await wait_until(lambda: _applied_at_least(pool, 1), what="the replayed SMS billed")
        await asyncio.sleep(1)
        # Billed on its first replay: not refused a second time.
        assert len(await read_topic(kafka_bootstrap, settings.dlq_topic, 2, timeout_s=2)) == 1
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(60) == 0, log.read_text()[-3000:]
    assert await pool.fetchval("SELECT amount FROM ledger") == -parse_amount("0.031")


def _metric_total(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
async def test_embedded_services_leave_no_process_behind(tmp_path: Path, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update({"RATING_DATA_DIR": str(tmp_path / "data"), "RATING_METRICS_PORT": "0",
                "RATING_HTTP_PORT": "0", "RATING_PAYMENT_SIMULATION": "succeed"})
    log = tmp_path / "engine.log"
    engine = start_engine(env, log)
    try:
        await wait_for_log(log, "rating engine running", engine, timeout_s=120)
        children = _children(engine.pid)
        names = {c.name() for c in children}
        assert "postgres" in names and any("tansu" in n for n in names), names
        if how == "sigint":
            engine.send_signal(signal.SIGINT)
            assert engine.wait(60) == 0, log.read_text()[-3000:]
        else:
            engine.kill()
            engine.wait(10)
    finally:
        if engine.poll() is None:
            engine.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        await asyncio.sleep(0.2)
    assert [c.pid for c in children if _alive(c)] == []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENGINE, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


async def test_accounts_create_and_show_with_embedded_postgres_survive_a_restart(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env["RATING_DATA_DIR"] = str(tmp_path / "data")
    created = run_cli(env, "accounts", "create", "acct-1", "--plan", "standard",
                      "--balance", "10")
    assert created.returncode == 0, created.stderr
    shown = run_cli(env, "accounts", "show", "acct-1")  # a new process, a new server start
    assert shown.returncode == 0, shown.stderr
    assert '"balance": "10.000000"' in shown.stdout
    assert '"currency": "EUR"' in shown.stdout
    again = run_cli(env, "accounts", "create", "acct-1", "--plan", "standard")
    assert again.returncode == 1 and "already exists" in again.stderr


@pytest.mark.parametrize(("variables", "needle"), [
    ({"RATING_KAFKA_BOOTSTRAP": "nonsense"}, "RATING_KAFKA_BOOTSTRAP"),
    ({"RATING_METRICS_PORT": "ninety"}, "RATING_METRICS_PORT"),
    ({"RATING_DATABASE_URL": "postgresql://rating@127.0.0.1:1/rating",
      "RATING_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, "cannot connect to PostgreSQL"),
    ({"RATING_DATA_DIR": "/proc/no-such-place"}, "RATING_DATA_DIR"),
    ({"RATING_DATA_DIR": __file__}, "RATING_DATA_DIR"),  # a file, not a directory
    ({"RATING_METRICS_PORT": "18999", "RATING_HTTP_PORT": "18999"}, "RATING_METRICS_PORT"),
    # A DLQ that is the usage topic would refuse the same events forever.
    ({"RATING_USAGE_TOPIC": "u", "RATING_DLQ_TOPIC": "u"}, "RATING_DLQ_TOPIC"),
    ({"RATING_CONSUMER_GROUP": "g", "RATING_RECHARGE_GROUP": "g"}, "RATING_RECHARGE_GROUP"),
    ({"RATING_TARIFFS_DIR": "/no/such/tariffs"}, "RATING_TARIFFS_DIR"),
])
async def test_bad_configuration_fails_with_one_clear_line(
        tmp_path: Path, variables: dict[str, str], needle: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update({"RATING_DATA_DIR": str(tmp_path / "data"),
                "RATING_PAYMENT_SIMULATION": "succeed", **variables})
    result = run_cli(env, "run")
    assert result.returncode == 2 or "RATING_" not in needle, result.stderr  # settings: 2
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and needle in errors[0], result.stderr

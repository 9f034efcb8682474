"""The batched debit statement against real PostgreSQL: exact values, redelivered
events skipped, concurrent writers of the same events charged once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from rating.core.identifiers import MAX_KEY_LENGTH
from rating.core.rate import Charge
from rating.core.thresholds import balance_crossings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import CROSSINGS_SQL, RatedUsage, apply_usage
from rating.stores.outbox import BalanceChange, crossing_events
from tests.support import ledger_explains_balances

OPENING = 1_000 * 1_000_000


def usage(n: int, account_id: str = "acct-1", amount: int = 1_000,
          service: str = "call", on_invoice: bool = False) -> RatedUsage:
    charge = Charge(f"e{n}", "switch-test", account_id, service, "GB", amount,  # type: ignore[arg-type]
                    "EUR", "standard")
    return RatedUsage(charge, datetime(2026, 11, 25, 12, 0, tzinfo=UTC), on_invoice)


@pytest.fixture
async def accounts(pool: asyncpg.Pool) -> None:
    await AccountStore(pool).create_many(
        NewAccount(a, "standard", "EUR", balance=OPENING) for a in ("acct-1", "acct-2"))


async def apply(pool: asyncpg.Pool, batch: list[RatedUsage]) -> tuple[int, int]:
    async with pool.acquire() as conn:
        result = await apply_usage(conn, batch)
    return result.applied, result.duplicates


async def balance(pool: asyncpg.Pool, account_id: str = "acct-1") -> int:
    value: int = await pool.fetchval("SELECT balance FROM accounts WHERE id = $1", account_id)
    return value


async def test_values_are_stored_exactly(pool: asyncpg.Pool, accounts: None) -> None:
    # Past 2**53 a float would round; event time keeps its microseconds and offset.
    huge = 2**53 + 1
    when = datetime(2026, 11, 25, 13, 14, 15, 123_456, tzinfo=timezone(timedelta(hours=-5)))
    charge = Charge("é-\"quoted\"\\id", "switch/ü", "acct-1", "sms", None, huge, "EUR",
                    "standard")
    assert await apply(pool, [RatedUsage(charge, when, False)]) == (1, 0)
    row = await pool.fetchrow("SELECT * FROM ledger WHERE event_source = 'switch/ü'")
    assert row["event_id"] == "é-\"quoted\"\\id"
    assert row["amount"] == -huge and row["accrued"] == 0
    assert row["country"] is None and row["service"] == "sms" and row["kind"] == "usage"
    assert row["event_time"] == when
    assert await balance(pool) == OPENING - huge


async def test_invoice_usage_accrues_without_debiting(pool: asyncpg.Pool, accounts: None) -> None:
    assert await apply(pool, [usage(1, service="stt", amount=700, on_invoice=True)]) == (1, 0)
    row = await pool.fetchrow("SELECT kind, amount, accrued FROM ledger")
    assert (row["kind"], row["amount"], row["accrued"]) == ("invoice", 0, 700)
    assert await balance(pool) == OPENING


async def test_a_batch_with_redelivered_events_applies_only_the_new_ones(
        pool: asyncpg.Pool, accounts: None) -> None:
    assert await apply(pool, [usage(1), usage(2, "acct-2")]) == (2, 0)
    # A redelivered batch: two events the ledger has, two it has not.
    again = [usage(1), usage(2, "acct-2"), usage(3), usage(4, "acct-2", amount=5)]
    assert await apply(pool, again) == (2, 2)
    assert await apply(pool, again) == (0, 4)
    assert await balance(pool, "acct-1") == OPENING - 2_000
    assert await balance(pool, "acct-2") == OPENING - 1_005
    assert await pool.fetchval("SELECT count(*) FROM ledger") == 4
    assert await ledger_explains_balances(pool) == []


@pytest.mark.parametrize("accounts_in_batch", [3, 1_200])
async def test_small_and_large_batches_debit_each_account_by_its_sum(
        pool: asyncpg.Pool, accounts_in_batch: int) -> None:
    # Up to 1 000 accounts the statement fetches them by key; above, the planner
    # chooses. Both must give the same balances, new or redelivered.
    ids = [f"many-{i:05d}" for i in range(accounts_in_batch)]
    await AccountStore(pool).create_many(
        NewAccount(a, "standard", "EUR", balance=OPENING) for a in ids)
    batch = [usage(n, ids[n % len(ids)], amount=1_000 + n % 7) for n in range(2 * len(ids))]
    expected = {a: OPENING for a in ids}
    for u in batch:
        expected[u.charge.account_id] -= u.charge.amount
    assert await apply(pool, batch) == (len(batch), 0)
    assert await apply(pool, [*batch, usage(10**6, ids[0], amount=1)]) == (1, len(batch))
    expected[ids[0]] -= 1
    rows = await pool.fetch("SELECT id, balance FROM accounts WHERE id LIKE 'many-%'")
    assert {r["id"]: r["balance"] for r in rows} == expected
    assert await ledger_explains_balances(pool) == []


async def test_a_redelivered_batch_inside_a_callers_transaction_keeps_the_rest_of_it(
        pool: asyncpg.Pool, accounts: None) -> None:
    assert await apply(pool, [usage(1)]) == (1, 0)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE accounts SET low_balance_threshold = 7 WHERE id = 'acct-2'")
        result = await apply_usage(conn, [usage(1), usage(2)])
        assert (result.applied, result.duplicates) == (1, 1)
    # The caller's own write before the fallback survived the undone first attempt.
    assert await pool.fetchval(
        "SELECT low_balance_threshold FROM accounts WHERE id = 'acct-2'") == 7
    assert await balance(pool) == OPENING - 2_000


async def test_the_same_event_twice_in_one_batch_is_charged_once(
        pool: asyncpg.Pool, accounts: None) -> None:
    assert await apply(pool, [usage(1), usage(1)]) == (1, 1)
    assert await balance(pool) == OPENING - 1_000


async def test_concurrent_writers_of_the_same_events_charge_them_once(
        pool: asyncpg.Pool, accounts: None) -> None:
    """As during a rebalance: two members write overlapping batches at the same time."""
    first = [usage(n) for n in range(1, 51)]
    second = [usage(n) for n in range(26, 76)]
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()  # apply_usage becomes a savepoint of it
        assert (await apply_usage(conn, first)).applied == 50
        # The second writer waits on the first's uncommitted rows, then skips them.
        other = asyncio.create_task(apply(pool, second))
        await asyncio.sleep(0.3)
        assert not other.done()
        await transaction.commit()
    assert await asyncio.wait_for(other, 10) == (25, 25)
    assert await balance(pool) == OPENING - 75 * 1_000
    assert await ledger_explains_balances(pool) == []


async def test_the_longest_event_keys_the_decoder_accepts_fit_the_ledger_index(
        pool: asyncpg.Pool, accounts: None) -> None:
    widest = "\U0001f4de" * MAX_KEY_LENGTH  # 4 bytes each in UTF-8
    charge = Charge(widest, widest, "acct-1", "call", "GB", 1, "EUR", "standard")
    assert await apply(pool, [RatedUsage(charge, datetime.now(UTC), False)]) == (1, 0)


async def test_writers_of_overlapping_accounts_in_opposite_orders_never_deadlock(
        pool: asyncpg.Pool) -> None:
    # The debit statement locks its accounts in id order before it updates any: two
    # writers whose events name the same accounts in opposite orders just queue.
    ids = [f"lock-{i:04d}" for i in range(300)]
    await AccountStore(pool).create_many(
        NewAccount(a, "standard", "EUR", balance=OPENING) for a in ids)
    for round_ in range(8):
        forward = [usage(10_000 * round_ + n, a) for n, a in enumerate(ids)]
        backward = [usage(10_000 * round_ + 5_000 + n, a)
                    for n, a in enumerate(reversed(ids))]
        assert await asyncio.gather(apply(pool, forward), apply(pool, backward)) == [
            (300, 0), (300, 0)]
    balances = await pool.fetch("SELECT balance FROM accounts WHERE id LIKE 'lock-%'")
    assert {r["balance"] for r in balances} == {OPENING - 16 * 1_000}
    assert await ledger_explains_balances(pool) == []


async def test_the_debit_statement_announces_crossings_as_the_threshold_rule_does(
        pool: asyncpg.Pool) -> None:
    # The statement writes the outbox rows itself, with CROSSINGS_SQL; rating.core.thresholds
    # is the rule. Every ordering of before, after and threshold around zero, and
    # equalities, is covered by small values.
    values = range(-3, 4)
    cases = [(b, a, t) for b in values for a in values for t in range(0, 4)]
    rows = await pool.fetch(
        "SELECT i, crossing.type FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])"
        " WITH ORDINALITY AS c(before, after, threshold, i), LATERAL " + CROSSINGS_SQL
        + " WHERE crossing.crossed ORDER BY i, crossing.rank",
        [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    in_sql: dict[int, list[str]] = {}
    for r in rows:
        in_sql.setdefault(r["i"] - 1, []).append(r["type"])
    assert {i: types for i, c in enumerate(cases) if (types := balance_crossings(*c))} == in_sql


async def test_the_outbox_rows_of_a_debit_are_those_crossing_events_makes(
        pool: asyncpg.Pool) -> None:
    # Top-ups write their balance events with rating.stores.outbox.crossing_events; the debit
    # statement writes its own. Same ids (account:version:type), values and order.
    await AccountStore(pool).create(NewAccount("acct-x", "standard", "EUR", balance=3_000,
                                               low_balance_threshold=2_500))
    async with pool.acquire() as conn:
        result = await apply_usage(conn, [usage(1, "acct-x", amount=4_000)])
    version = await pool.fetchval("SELECT version FROM accounts WHERE id = 'acct-x'")
    expected = crossing_events(BalanceChange("acct-x", 3_000, -1_000, 2_500, "EUR", version))
    assert [e.type for e in expected] == ["balance.low", "balance.exhausted"]
    assert result.announced == expected
    rows = await pool.fetch("SELECT event_id, type, account_id, balance, threshold, currency"
                            " FROM outbox ORDER BY seq")
    assert [tuple(r) for r in rows] == [
        (e.event_id, e.type, e.account_id, e.balance, e.threshold, e.currency)
        for e in expected]

"""Credit reservations against real PostgreSQL: grants, extensions, releases, settlement by
the usage debit statement, expiry, and the grant rule in SQL against the pure one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating.core.errors import (
    IdempotencyConflict,
    InsufficientCredit,
    ReservationClosed,
    UnknownAccount,
    UnknownReservation,
)
from rating.core.money import parse_amount
from rating.core.pricing import Increment, TimedRate, cost
from rating.core.rate import Charge, call_rate_for
from rating.core.reservations import grant_total
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage, lookup_accounts
from rating.stores.reservations import CallLeg, ReservationStore
from rating.tariffbook.book import TariffStore
from tests.support import ledger_explains_balances, write_flat_tariffs

GB = "+442071234567"  # flat plan: 0.10 per minute, 60/60, no connect fee
GB_MOBILE = "+447700900123"  # flat plan prefix 447: 0.30 per minute, 0.05 connect, 30/6
PER_MINUTE = TimedRate(100_000, 0, Increment(60, 60))
MOBILE = TimedRate(300_000, 50_000, Increment(30, 6))


@pytest.fixture
def book(tmp_path: Path) -> TariffStore:
    return TariffStore(write_flat_tariffs(tmp_path / "tariffs"))


@pytest.fixture
def store(pool: asyncpg.Pool) -> ReservationStore:
    return ReservationStore(pool, cap_seconds=300, grace_seconds=60)


async def account(pool: asyncpg.Pool, account_id: str, amount: str) -> None:
    await AccountStore(pool).create(NewAccount(account_id, "flat", "EUR", parse_amount(amount)))


def rate_for(book: TariffStore, number: str = GB):  # type: ignore[no-untyped-def]
    return lambda plan_id: call_rate_for(book.book, plan_id, number)


def leg(call_id: str, number: str = GB, source: str = "switch-1") -> CallLeg:
    return CallLeg(source, call_id, "call", number)


async def held(pool: asyncpg.Pool, account_id: str) -> tuple[int, int, int]:
    """(balance, held, open reservations) of the account."""
    row = await pool.fetchrow(
        "SELECT balance, held, open_reservations FROM accounts WHERE id = $1", account_id)
    return row["balance"], row["held"], row["open_reservations"]


async def holds_add_up(pool: asyncpg.Pool) -> list[str]:
    """Accounts whose held / open_reservations differ from their reservations' rows."""
    rows = await pool.fetch(
        """
        SELECT a.id FROM accounts a
        LEFT JOIN (SELECT account_id, sum(held) AS held,
                          count(*) FILTER (WHERE status = 'open') AS n
                   FROM reservations GROUP BY account_id) r ON r.account_id = a.id
        WHERE a.held <> coalesce(r.held, 0) OR a.open_reservations <> coalesce(r.n, 0)
        """)
    return [r["id"] for r in rows]


def call_event(account_id: str, call_id: str, event_id: str, from_s: int, to_s: int,
               rate: TimedRate = PER_MINUTE, *, final: bool = False,
               source: str = "switch-1") -> RatedUsage:
    amount = cost(to_s, rate) - cost(from_s, rate)
    charge = Charge(event_id, source, account_id, "call", "GB", amount, "EUR", "flat")
    return RatedUsage(charge, datetime.now(UTC), False, call_id, final)


async def debit(pool: asyncpg.Pool, batch: list[RatedUsage]) -> int:
    async with pool.acquire() as conn:
        return (await apply_usage(conn, batch)).applied


async def test_a_grant_is_capped_and_holds_whole_increments(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "10.00")
    outcome = await store.reserve("a", leg("c-1"), rate_for(book))
    r = outcome.reservation
    assert outcome.changed and r.status == "open" and r.granted_seconds == 300
    assert r.held == cost(300, PER_MINUTE) == 500_000 and r.used == 0
    assert outcome.available == 10_000_000 - 500_000
    assert await held(pool, "a") == (10_000_000, 500_000, 1)
    assert r.expires_at - r.created_at == timedelta(seconds=300 + 60)
    # Connect fee and a 30/6 increment: whole blocks, the fee in the first.
    mobile = await store.reserve("a", leg("c-2", GB_MOBILE), rate_for(book, GB_MOBILE))
    assert mobile.reservation.granted_seconds == 300
    assert mobile.reservation.held == cost(300, MOBILE) == 1_550_000
    assert await held(pool, "a") == (10_000_000, 2_050_000, 2)
    assert await holds_add_up(pool) == []


async def test_a_grant_never_exceeds_the_available_credit(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "0.25")  # two whole minutes at 0.10 (0.05 left over)
    first = await store.reserve("a", leg("c-1"), rate_for(book))
    assert first.reservation.granted_seconds == 120 and first.reservation.held == 200_000
    assert first.available == 50_000
    with pytest.raises(InsufficientCredit):
        await store.reserve("a", leg("c-2"), rate_for(book))
    with pytest.raises(InsufficientCredit):
        await store.extend("a", first.reservation.reservation_id)
    assert await held(pool, "a") == (250_000, 200_000, 1)
    # Nothing was created for the refused call: reserving it later is a new grant.
    assert await pool.fetchval("SELECT count(*) FROM reservations") == 1


async def test_the_same_call_again_is_the_same_reservation(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "10.00")
    await account(pool, "b", "10.00")
    first = await store.reserve("a", leg("c-1"), rate_for(book))
    again = await store.reserve("a", leg("c-1"), rate_for(book))
    assert not again.changed and again.reservation == first.reservation
    assert await held(pool, "a") == (10_000_000, 500_000, 1)
    with pytest.raises(IdempotencyConflict):  # same call, another destination
        await store.reserve("a", leg("c-1", GB_MOBILE), rate_for(book, GB_MOBILE))
    with pytest.raises(IdempotencyConflict):  # same call, another account
        await store.reserve("b", leg("c-1"), rate_for(book))
    # Another switch may use the same call id.
    other = await store.reserve("a", leg("c-1", source="switch-2"), rate_for(book))
    assert other.changed
    assert await holds_add_up(pool) == []


async def test_extend_adds_up_to_the_cap_and_release_frees_everything(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "0.75")  # 7.5 minutes
    r = (await store.reserve("a", leg("c-1"), rate_for(book))).reservation
    extended = await store.extend("a", r.reservation_id)
    assert extended.reservation.granted_seconds == 420  # 300 + what 0.25 more covers
    assert extended.reservation.held == 700_000 and extended.available == 50_000
    assert extended.reservation.grants == 2
    assert extended.reservation.expires_at >= r.expires_at
    with pytest.raises(InsufficientCredit):
        await store.extend("a", r.reservation_id)
    released = await store.release("a", r.reservation_id)
    assert released.changed and released.reservation.status == "released"
    assert released.reservation.held == 0 and released.available == 750_000
    assert await held(pool, "a") == (750_000, 0, 0)
    again = await store.release("a", r.reservation_id)
    assert not again.changed and again.reservation.status == "released"
    with pytest.raises(ReservationClosed):
        await store.extend("a", r.reservation_id)
    with pytest.raises(UnknownReservation):
        await store.extend("a", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(UnknownReservation):  # another account's reservation
        await account(pool, "b", "1.00")
        await store.release("b", r.reservation_id)
    with pytest.raises(UnknownAccount):
        await store.reserve("nobody", leg("c-9"), rate_for(book))
    assert await holds_add_up(pool) == []


async def test_an_early_extension_is_held_until_its_own_seconds_have_passed(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    """A switch may extend at once: the expiry moves by the seconds added, so the hold
    lasts as long as the whole grant may be used, and the credit is not granted twice."""
    await account(pool, "a", "1.00")  # 10 minutes: two grants of 300 s, nothing more
    r = (await store.reserve("a", leg("c-1"), rate_for(book))).reservation
    extended = (await store.extend("a", r.reservation_id)).reservation
    assert extended.granted_seconds == 600
    assert extended.expires_at == r.expires_at + timedelta(seconds=300)
    past_the_first_grant = r.expires_at + timedelta(seconds=1)
    assert await store.expire(as_of=past_the_first_grant) == []
    with pytest.raises(InsufficientCredit):  # all ten minutes are still held for c-1
        await store.reserve("a", leg("c-2"), rate_for(book))
    swept = await store.expire(as_of=extended.expires_at + timedelta(seconds=1))
    assert [(e.account_id, e.expired, e.freed) for e in swept] == [("a", 1, 1_000_000)]
    assert await holds_add_up(pool) == []


async def test_a_late_extension_is_held_from_when_it_is_granted(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    """An extension after the first grant's time (the call was answered late, its usage
    kept the reservation open) runs from now: its seconds + the grace."""
    await account(pool, "a", "1.00")
    r = (await store.reserve("a", leg("c-1"), rate_for(book))).reservation
    await pool.execute("UPDATE reservations SET expires_at = now() + interval '5 seconds'")
    before = datetime.now(UTC)
    extended = (await store.extend("a", r.reservation_id)).reservation
    assert extended.expires_at >= before + timedelta(seconds=300 + 60)


async def test_usage_settles_against_the_hold_and_final_closes_it(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "10.00")
    r = (await store.reserve("a", leg("c-1"), rate_for(book))).reservation
    assert (await lookup_accounts(pool, ["a"]))["a"].reserving
    assert await debit(pool, [call_event("a", "c-1", "e1", 0, 60),
                              call_event("a", "c-1", "e2", 60, 120)]) == 2
    assert await held(pool, "a") == (10_000_000 - 200_000, 300_000, 1)
    row = await pool.fetchrow("SELECT used, held, status FROM reservations")
    assert (row["used"], row["held"], row["status"]) == (200_000, 300_000, "open")
    # A redelivery changes nothing, with or without new events beside it.
    assert await debit(pool, [call_event("a", "c-1", "e2", 60, 120)]) == 0
    assert await held(pool, "a") == (10_000_000 - 200_000, 300_000, 1)
    assert await debit(pool, [call_event("a", "c-1", "e2", 60, 120),
                              call_event("a", "c-1", "e3", 120, 150, final=True)]) == 1
    assert await held(pool, "a") == (10_000_000 - 300_000, 0, 0)
    closed = await store.get("a", r.reservation_id)
    assert closed.status == "final" and closed.used == 300_000 and closed.held == 0
    # The call's charges add up to cost(150 s); a late event is billed as always.
    assert await debit(pool, [call_event("a", "c-1", "e4", 150, 200, final=True)]) == 1
    assert await held(pool, "a") == (10_000_000 - 400_000, 0, 0)
    assert (await store.get("a", r.reservation_id)).used == 300_000
    assert not (await lookup_accounts(pool, ["a"]))["a"].reserving
    assert await ledger_explains_balances(pool) == [] and await holds_add_up(pool) == []


async def test_usage_beyond_the_grant_is_billed_and_a_zero_charge_final_still_closes(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "10.00")
    await store.reserve("a", leg("c-1"), rate_for(book))
    assert await debit(pool, [call_event("a", "c-1", "e1", 0, 400)]) == 1
    assert await held(pool, "a") == (10_000_000 - 700_000, 0, 1)
    # 400..420 is inside the last billed block: charge 0, the balance does not move.
    assert await debit(pool, [call_event("a", "c-1", "e2", 400, 420, final=True)]) == 1
    assert await held(pool, "a") == (10_000_000 - 700_000, 0, 0)
    assert await holds_add_up(pool) == []


async def test_only_the_reserving_account_and_source_settle(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "10.00")
    await account(pool, "b", "10.00")
    await store.reserve("a", leg("c-1"), rate_for(book))
    batch = [call_event("b", "c-1", "e1", 0, 60, final=True),  # another account
             call_event("a", "c-1", "e2", 0, 60, final=True, source="switch-2"),
             call_event("a", "c-2", "e3", 0, 60, final=True)]  # no reservation
    assert await debit(pool, batch) == 3
    assert await held(pool, "a") == (10_000_000 - 200_000, 500_000, 1)
    assert await held(pool, "b") == (10_000_000 - 100_000, 0, 0)
    assert await holds_add_up(pool) == [] and await ledger_explains_balances(pool) == []


async def test_expired_reservations_free_their_credit_and_late_usage_is_billed(
        pool: asyncpg.Pool, store: ReservationStore, book: TariffStore) -> None:
    await account(pool, "a", "10.00")
    await account(pool, "b", "10.00")
    r1 = (await store.reserve("a", leg("c-1"), rate_for(book))).reservation
    await store.reserve("a", leg("c-2"), rate_for(book))
    r3 = (await store.reserve("b", leg("c-3"), rate_for(book))).reservation
    assert await store.expire() == []  # nothing is due yet
    swept = await store.expire(as_of=r1.expires_at + timedelta(seconds=1))
    assert sorted((e.account_id, e.expired, e.freed) for e in swept) == [
        ("a", 2, 1_000_000), ("b", 1, 500_000)]
    assert await held(pool, "a") == (10_000_000, 0, 0)
    assert (await store.get("b", r3.reservation_id)).status == "expired"
    assert await debit(pool, [call_event("a", "c-1", "e1", 0, 60, final=True)]) == 1
    assert await held(pool, "a") == (10_000_000 - 100_000, 0, 0)
    assert await holds_add_up(pool) == [] and await ledger_explains_balances(pool) == []


async def test_usage_moves_the_expiry_forward(
        pool: asyncpg.Pool, book: TariffStore) -> None:
    store = ReservationStore(pool, cap_seconds=60, grace_seconds=3600)
    await account(pool, "a", "10.00")
    r = (await store.reserve("a", leg("c-1"), rate_for(book))).reservation
    await pool.execute("UPDATE reservations SET expires_at = now() - interval '1 minute'")
    assert await debit(pool, [call_event("a", "c-1", "e1", 0, 30)]) == 1
    assert (await store.get("a", r.reservation_id)).expires_at > datetime.now(UTC)
    assert await store.expire() == []


async def test_fifty_concurrent_reservations_share_ten_minutes_of_credit(
        pool: asyncpg.Pool, book: TariffStore) -> None:
    store = ReservationStore(pool, cap_seconds=120, grace_seconds=60)
    await account(pool, "a", "1.00")  # ten minutes at 0.10
    results = await asyncio.gather(
        *(store.reserve("a", leg(f"c-{i}"), rate_for(book)) for i in range(50)),
        return_exceptions=True)
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, InsufficientCredit) for e in refused)
    assert sum(o.reservation.granted_seconds for o in granted) == 600
    assert len(granted) == 5 and await held(pool, "a") == (1_000_000, 1_000_000, 5)
    # Extensions at once: none can be granted, the credit is all held.
    extended = await asyncio.gather(
        *(store.extend("a", o.reservation.reservation_id) for o in granted),
        return_exceptions=True)
    assert all(isinstance(e, InsufficientCredit) for e in extended)
    # Releasing two returns their credit: four more minutes, whoever asks.
    for o in granted[:2]:
        await store.release("a", o.reservation.reservation_id)
    again = await asyncio.gather(
        *(store.reserve("a", leg(f"d-{i}"), rate_for(book)) for i in range(10)),
        return_exceptions=True)
    assert sum(o.reservation.granted_seconds for o in again
               if not isinstance(o, BaseException)) == 240
    assert await holds_add_up(pool) == []


@given(available=st.integers(-10**7, 10**13), granted=st.integers(0, 10**5),
       used=st.integers(0, 10**9), cap=st.integers(0, 3600),
       per_minute=st.one_of(st.just(0), st.integers(1, 10**9)),
       fee=st.integers(0, 10**7), first=st.integers(1, 600), step=st.integers(1, 600))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_sql_grant_rule_is_the_pure_one(
        database_url: str, available: int, granted: int, used: int, cap: int,
        per_minute: int, fee: int, first: int, step: int) -> None:
    rate = TimedRate(per_minute, fee, Increment(first, step))
    expected = grant_total(available=available, granted=granted, used=used, cap=cap, rate=rate)

    async def in_sql() -> tuple[int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT reservation_grant($1, $2, $3, $4, $5, $6, $7, $8) AS t,"
                " reservation_cost($2, $5, $6, $7, $8) AS c",
                available, granted, used, cap, per_minute, fee, first, step)
        finally:
            await conn.close()
        return row["t"], row["c"]

    total, cost_sql = asyncio.run(in_sql())
    assert total == expected
    assert cost_sql == cost(granted, rate)

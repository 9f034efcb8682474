"""Any interleaving of reserve, extend, usage, final, release, expiry, redelivery and top-up
on one account, against real PostgreSQL and an independent model: every grant leaves the
available credit >= 0 and is exactly what the pure rule allows, each call's charges add up
to cost(its seconds), the holds are what the model says, and balance = opening + ledger."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rating.core.errors import InsufficientCredit
from rating.core.pricing import Increment, TimedRate, cost
from rating.core.rate import Charge
from rating.core.reservations import grant_total, hold
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import RatedUsage, apply_usage
from rating.stores.reservations import CallLeg, ReservationStore

T = TypeVar("T")
CAP = 120
# A connect fee and a first block longer than the steps: the awkward case of §4.
RATE = TimedRate(90_000, 20_000, Increment(30, 6))


@dataclass
class Call:
    call_id: str
    reservation_id: str | None = None
    granted: int = 0
    used: int = 0  # charges settled against the reservation
    open: bool = False
    seconds: int = 0  # elapsed seconds billed so far
    ended: bool = False
    events: int = 0


class ReservationMachine(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop
    pool: asyncpg.Pool

    def __init__(self) -> None:
        super().__init__()
        self.account = f"acct-{uuid.uuid4().hex[:12]}"
        self.source = f"switch-{self.account}"  # the examples share one database
        self.opening = 2_000_000
        self.balance = self.opening
        self.calls: list[Call] = []
        self.sent: list[RatedUsage] = []
        self.ids = itertools.count(1)
        self.store = ReservationStore(self.pool, cap_seconds=CAP, grace_seconds=60)
        self.run(AccountStore(self.pool).create(
            NewAccount(self.account, "flat", "EUR", self.opening)))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # --- the model ---

    def held(self) -> int:
        return sum(hold(c.granted, c.used, RATE) for c in self.calls if c.open)

    def available(self) -> int:
        return self.balance - self.held()

    async def _db(self) -> asyncpg.Record:
        return await self.pool.fetchrow(
            "SELECT balance, held, open_reservations FROM accounts WHERE id = $1", self.account)

    def _check_grant(self, before_available: int, call: Call, outcome_available: int) -> None:
        assert outcome_available >= 0, "a grant left the available credit negative"
        assert outcome_available == self.available()
        assert before_available >= 0

    # --- rules ---

    @rule()
    def reserve(self) -> None:
        call = Call(f"c-{next(self.ids)}")
        self.calls.append(call)
        before = self.available()
        expected = grant_total(available=before, granted=0, used=0, cap=CAP, rate=RATE)
        leg = CallLeg(self.source, call.call_id, "call", "+442071234567")
        try:
            outcome = self.run(self.store.reserve(self.account, leg, lambda _plan: RATE))
        except InsufficientCredit:
            assert expected == 0
            return
        assert outcome.reservation.granted_seconds == expected > 0
        call.reservation_id, call.granted, call.open = (
            outcome.reservation.reservation_id, expected, True)
        self._check_grant(before, call, outcome.available)

    def _open(self) -> list[Call]:
        return [c for c in self.calls if c.open]

    def _talking(self) -> list[Call]:
        return [c for c in self.calls if not c.ended]

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self._open()))
        assert call.reservation_id is not None
        before = self.available()
        expected = grant_total(available=before, granted=call.granted, used=call.used,
                               cap=CAP, rate=RATE)
        try:
            outcome = self.run(self.store.extend(self.account, call.reservation_id))
        except InsufficientCredit:
            assert expected == call.granted
            return
        assert outcome.reservation.granted_seconds == expected > call.granted
        call.granted = expected
        self._check_grant(before, call, outcome.available)

    @precondition(lambda self: self._talking())
    @rule(data=st.data(), seconds=st.integers(1, 200), final=st.booleans())
    def usage(self, data: st.DataObject, seconds: int, final: bool) -> None:
        call = data.draw(st.sampled_from(self._talking()))
        from_s, to_s = call.seconds, call.seconds + seconds
        amount = cost(to_s, RATE) - cost(from_s, RATE)
        charge = Charge(f"{call.call_id}-e{call.events}", self.source, self.account, "call",
                        "GB", amount, "EUR", "flat")
        event = RatedUsage(charge, datetime.now(UTC), False, call.call_id, final)
        self._debit([event], expect_applied=1)
        self.sent.append(event)
        call.events += 1
        call.seconds = to_s
        self.balance -= amount
        if call.open:
            call.used += amount
            if final:
                call.open = False
        call.ended = final

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        self._debit([data.draw(st.sampled_from(self.sent))], expect_applied=0)

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self._open()))
        assert call.reservation_id is not None
        outcome = self.run(self.store.release(self.account, call.reservation_id))
        assert outcome.changed and outcome.reservation.held == 0
        call.open = False
        assert outcome.available == self.available()

    @precondition(lambda self: self._open())
    @rule()
    def switch_vanishes(self) -> None:
        later = datetime.now(UTC) + timedelta(days=1)
        swept = self.run(self.store.expire(as_of=later))
        expected = len(self._open())
        assert [(e.expired, e.freed) for e in swept if e.account_id == self.account] == [
            (expected, self.held())]
        for call in self._open():
            call.open = False

    @rule(amount=st.integers(1, 500_000))
    def topup(self, amount: int) -> None:
        self.run(AccountStore(self.pool).credit(
            self.account, kind="topup", source="test", key=f"{self.account}/{next(self.ids)}",
            amount=amount))
        self.balance += amount

    def _debit(self, batch: list[RatedUsage], *, expect_applied: int) -> None:
        async def go() -> int:
            async with self.pool.acquire() as conn:
                return (await apply_usage(conn, batch)).applied

        assert self.run(go()) == expect_applied

    # --- invariants ---

    @invariant()
    def database_is_the_model(self) -> None:
        row = self.run(self._db())
        assert (row["balance"], row["held"], row["open_reservations"]) == (
            self.balance, self.held(), len(self._open()))

    @invariant()
    def the_ledger_explains_the_balance_and_each_call_adds_up(self) -> None:
        rows = self.run(self.pool.fetch(
            "SELECT kind, event_id, amount FROM ledger WHERE account_id = $1", self.account))
        assert self.opening + sum(r["amount"] for r in rows) == self.balance
        per_call: dict[str, int] = {}
        for r in rows:
            if r["kind"] == "usage":
                call_id = r["event_id"].rsplit("-e", 1)[0]
                per_call[call_id] = per_call.get(call_id, 0) - r["amount"]
        for call in self.calls:
            assert per_call.get(call.call_id, 0) == cost(call.seconds, RATE)

    @invariant()
    def holds_match_the_reservation_rows(self) -> None:
        total = self.run(self.pool.fetchval(
            "SELECT coalesce(sum(held), 0) FROM reservations WHERE account_id = $1",
            self.account))
        assert total == self.held()


def test_any_interleaving_keeps_the_credit_and_the_ledger_exact(database_url: str) -> None:
    async def create_pool() -> asyncpg.Pool:  # a pool belongs to the loop it is made in
        return await asyncpg.create_pool(database_url, min_size=1, max_size=2)

    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(create_pool())
    try:
        ReservationMachine.loop, ReservationMachine.pool = loop, pool
        run_state_machine_as_test(ReservationMachine, settings=settings(
            max_examples=40, stateful_step_count=30, deadline=None))
    finally:
        loop.run_until_complete(pool.close())
        loop.close()

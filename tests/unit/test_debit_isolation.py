"""Poison isolation: a debit the database refuses is narrowed down to the events to blame."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from consumers.debit_isolation import SystemicDebitFailure, debit_isolating, refusal
from consumers.retry import StoppedWhileRetrying
from rating.core.rate import Charge
from rating.stores.db import BALANCE_BOUND_CONSTRAINT
from rating.stores.ledger import BatchResult, DebitBatch, RatedUsage, UsageTotal

WHEN = datetime(2026, 11, 25, 10, tzinfo=UTC)


def usage(event_id: str, account: str = "acct-1", amount: int = 12_000) -> RatedUsage:
    charge = Charge(event_id, "switch-1", account, "call", "GB", amount, "EUR", "standard")
    return RatedUsage(charge, WHEN, False)


class FakeDatabase:
    """Applies a debit unless it holds an event ``fails`` names: then raises its error."""

    def __init__(self, fails: dict[str, BaseException] | None = None,
                 always: BaseException | None = None) -> None:
        self.fails = fails or {}
        self.always = always
        self.statements = 0
        self.applied: list[str] = []

    async def apply(self, debit: DebitBatch) -> BatchResult:
        self.statements += 1
        if self.always is not None:
            raise self.always
        for u in debit.usage:
            if u.charge.event_id in self.fails:
                raise self.fails[u.charge.event_id]
        self.applied += [u.charge.event_id for u in debit.usage]
        amount = sum(u.charge.amount for u in debit.usage)
        return BatchResult(len(debit.usage), 0, [],
                           [UsageTotal("call", "EUR", "usage", len(debit.usage), amount)])


def out_of_range() -> asyncpg.PostgresError:
    return asyncpg.exceptions.NumericValueOutOfRangeError("bigint out of range")


def bound_violation() -> asyncpg.PostgresError:
    exc = asyncpg.exceptions.CheckViolationError("violates check constraint")
    exc.constraint_name = BALANCE_BOUND_CONSTRAINT  # type: ignore[attr-defined]
    return exc


async def test_a_batch_the_database_takes_is_one_statement() -> None:
    db = FakeDatabase()
    batch = [usage(f"e{i}") for i in range(100)]
    outcome = await debit_isolating(db.apply, DebitBatch.of(batch))
    assert db.statements == 1 and outcome.refused == []
    assert outcome.result.applied == 100


async def test_one_overflowing_event_is_refused_and_every_other_event_is_debited_in_order(
        ) -> None:
    batch = [usage(f"e{i}") for i in range(1000)]
    db = FakeDatabase({"e617": out_of_range()})
    outcome = await debit_isolating(db.apply, DebitBatch.of(batch))
    assert [(i, why.code) for i, why in outcome.refused] == [(617, "balance_out_of_range")]
    assert db.applied == [f"e{i}" for i in range(1000) if i != 617]  # event order kept
    assert outcome.result.applied == 999
    assert sum(t.events for t in outcome.result.totals) == 999
    assert db.statements <= 1 + 2 * 10  # a split per level, two statements each


async def test_several_poisons_each_refused_with_its_own_reason() -> None:
    batch = [usage(f"e{i}") for i in range(64)]
    db = FakeDatabase({
        "e3": bound_violation(),
        "e40": asyncpg.exceptions.InvalidTextRepresentationError("bad value"),
        "e41": out_of_range()})
    outcome = await debit_isolating(db.apply, DebitBatch.of(batch))
    assert [(i, why.code) for i, why in outcome.refused] == [
        (3, "balance_out_of_range"), (40, "debit_refused"), (41, "balance_out_of_range")]
    assert "SQLSTATE 22P02" in outcome.refused[1][1].message
    assert len(db.applied) == 61


async def test_an_event_failing_for_a_reason_not_in_its_data_is_refused_as_debit_failed(
        ) -> None:
    batch = [usage(f"e{i}") for i in range(10)]
    db = FakeDatabase({"e5": RuntimeError("a bug that only this event reaches")})
    outcome = await debit_isolating(db.apply, DebitBatch.of(batch))
    assert [(i, why.code) for i, why in outcome.refused] == [(5, "debit_failed")]
    assert len(db.applied) == 9


async def test_a_batch_nothing_of_which_can_be_written_is_held_not_dead_lettered() -> None:
    batch = [usage(f"e{i}") for i in range(10_000)]
    db = FakeDatabase(always=asyncpg.exceptions.UndefinedTableError("no table ledger"))
    with pytest.raises(SystemicDebitFailure):
        await debit_isolating(db.apply, DebitBatch.of(batch))
    assert db.applied == []
    assert db.statements < 60  # gives up early rather than trying 20 000 statements


async def test_a_single_event_batch_refused_for_its_data_is_dead_lettered() -> None:
    db = FakeDatabase({"e0": out_of_range()})
    outcome = await debit_isolating(db.apply, DebitBatch.of([usage("e0")]))
    assert [why.code for _, why in outcome.refused] == ["balance_out_of_range"]


async def test_a_stop_while_retrying_an_outage_is_not_a_refusal() -> None:
    db = FakeDatabase({"e2": StoppedWhileRetrying("debit transaction")})
    with pytest.raises(StoppedWhileRetrying):
        await debit_isolating(db.apply, DebitBatch.of([usage(f"e{i}") for i in range(8)]))


def test_the_refusal_names_the_account_and_the_bound() -> None:
    why = refusal(usage("e1", "acct-9", 12_000), bound_violation())
    assert why.code == "balance_out_of_range"
    assert "acct-9" in why.message and "1000000000000.000000" in why.message

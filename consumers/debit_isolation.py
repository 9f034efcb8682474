"""A batch's debit that fails for a reason other than an outage: find the events to blame.

The debit is one statement, all or nothing: one event that the database refuses (a
balance pushed past ``money.BALANCE_BOUND``, past ``bigint``) would fail the batch
on every redelivery, and stop billing for everyone. So the batch is split in halves,
and halves of the failing halves, in event order, until the failing parts are single
events: those are refused (to the DLQ, with a precise ``error_code``), and every
other part is debited. A batch of n events with k such events costs about
2·k·log2(n) more statements, only when it happens.

When no part of the batch can be written, and the single events tried fail with
errors that are not their data's (a missing table, a privilege, a bug), the fault is
not in the events: ``SystemicDebitFailure`` is raised and the batch is held (retried
later, never dead-lettered), which is what the alerts are for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from consumers import metrics
from consumers.retry import StoppedWhileRetrying
from rating.core.errors import BalanceOutOfRange, DebitRefused, PermanentError
from rating.core.money import BALANCE_BOUND, format_amount
from rating.stores.db import error_kind, exceeds_balance_bound
from rating.stores.ledger import BatchResult, DebitBatch, RatedUsage

# Runs one debit (retrying outages itself); raises what is not an outage.
ApplyDebit = Callable[[DebitBatch], Awaitable[BatchResult]]

# Single events failing with errors that are not theirs, with nothing written, before
# the batch is judged to fail for a reason outside it.
_SYSTEMIC_AFTER = 3


class SystemicDebitFailure(Exception):
    """No part of a batch could be debited, for reasons that are not in its events."""


@dataclass(slots=True)
class IsolatedDebit:
    """What a batch's debit wrote (one result per part) and the events it refused."""

    results: list[BatchResult] = field(default_factory=list)
    refused: list[tuple[int, PermanentError]] = field(default_factory=list)  # (index, why)
    others: int = 0  # refusals for errors not in the event's data

    @property
    def result(self) -> BatchResult:
        if len(self.results) == 1:
            return self.results[0]
        return BatchResult(sum(r.applied for r in self.results),
                           sum(r.duplicates for r in self.results),
                           [e for r in self.results for e in r.announced],
                           [t for r in self.results for t in r.totals])


def refusal(usage: RatedUsage, exc: BaseException) -> PermanentError:
    """Why the database refused the debit of this one event, as a DLQ error."""
    charge = usage.charge
    if exceeds_balance_bound(exc):
        return BalanceOutOfRange(
            f"debiting {format_amount(charge.amount)} {charge.currency} would take the "
            f"balance of account {charge.account_id!r} past the bound of "
            f"{format_amount(BALANCE_BOUND)} either way")
    detail = f"{type(exc).__name__}: {exc}"
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        detail = f"SQLSTATE {sqlstate}: {detail}"
    if error_kind(exc) == "input":
        return DebitRefused(f"the database refused this event's debit ({detail})")
    return DebitRefused(f"this event's debit failed where the rest of its batch was written "
                        f"({detail})", code="debit_failed")


async def debit_isolating(apply: ApplyDebit, debit: DebitBatch) -> IsolatedDebit:
    """Debit ``debit`` whole, or as much of it as can be; see the module docstring."""
    outcome = IsolatedDebit()
    try:
        outcome.results.append(await apply(debit))
        return outcome
    except StoppedWhileRetrying:
        raise
    except Exception as exc:
        first: Exception = exc
    metrics.DEBIT_ISOLATIONS.inc()
    usage = debit.usage
    middle = len(usage) // 2
    if len(usage) == 1:
        _refuse(outcome, usage, 0, first)
    else:
        await _split(apply, usage, 0, middle, outcome)
        await _split(apply, usage, middle, len(usage), outcome)
    if not outcome.results and outcome.others == len(outcome.refused):
        raise SystemicDebitFailure(f"no part of a batch of {len(usage)} events could be "
                                   f"debited: {type(first).__name__}: {first}") from first
    return outcome


def _refuse(outcome: IsolatedDebit, usage: Sequence[RatedUsage], index: int,
            exc: BaseException) -> None:
    why = refusal(usage[index], exc)
    outcome.refused.append((index, why))
    if why.code == "debit_failed":
        outcome.others += 1
        if not outcome.results and outcome.others >= _SYSTEMIC_AFTER:
            raise SystemicDebitFailure(
                f"{outcome.others} single events of a batch failed to debit, and nothing "
                f"of it could be written: {type(exc).__name__}: {exc}") from exc


async def _split(apply: ApplyDebit, usage: Sequence[RatedUsage], lo: int, hi: int,
                 outcome: IsolatedDebit) -> None:
    """Debit ``usage[lo:hi]``, or its halves (in order) if it fails."""
    metrics.DEBIT_SPLITS.inc()
    try:
        outcome.results.append(await apply(DebitBatch.of(usage[lo:hi])))
        return
    except StoppedWhileRetrying:
        raise
    except Exception as exc:
        if hi - lo == 1:
            _refuse(outcome, usage, lo, exc)
            return
    middle = (lo + hi) // 2
    await _split(apply, usage, lo, middle, outcome)
    await _split(apply, usage, middle, hi, outcome)

"""Automatic recharges: the card is charged first, credit follows
only for money actually taken, and each payment is credited exactly once.

A recharge (one row per ``balance.low`` crossing, or per time auto-recharge is turned on
or its threshold raised while the balance is already below it; at most one in flight
per account)::

    requested ──claim──► charging ──succeeded──► succeeded   credit + recharge.succeeded
        ▲                   │  └────pending────► pending ──status()──► (same answers)
        │                   └──declined──► requested (attempt + 1, after its wait)
        │                                  or failed (a hard decline, or the last attempt:
        │                                  automatic recharge turned off, recharge.disabled)
        └── cancelled when a retry comes due and auto-recharge is off or the balance
            is back at or above the threshold (the customer topped up)

An attempt's idempotency key is ``recharge/<crossing>/<attempt>``: a lost answer is
re-asked with the same key (the provider returns the same payment), and only a
decline moves on to a new key, after a delay, so a card is never hammered
(rating/stores/recharge_declines.py). Requests, and the daily limit, are in
rating/stores/recharge_requests.py; the sweeper's queries in recharge_sweep.py.

Every loop over rows (due attempts, pending payments, the sweep) handles each row's
failure alone: a row that fails for a reason that is not an outage is marked
(``last_error``), logged once, counted (outcome ``error``) and tried again only after
``RechargePolicy.error_retry_s``; the rows behind it go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import asyncpg

from rating.core.errors import UnknownPayment, describe
from rating.core.money import BALANCE_BOUND, format_amount
from rating.payments.provider import (
    ChargeRequest,
    PaymentProvider,
    PaymentResult,
)
from rating.stores.accounts import AccountStore
from rating.stores.credit_on_its_way import credit_on_its_way
from rating.stores.db import is_transient
from rating.stores.outbox import insert_events
from rating.stores.recharge_declines import record_decline
from rating.stores.recharge_requests import (
    ACCOUNT_SQL,
    RechargeAttempt,
    RechargeOutcome,
    account_row,
    latest_crossing,
    recharge_event,
    request_recharge,
)
from rating.stores.recharge_sweep import due_accounts, request_due

log = logging.getLogger(__name__)

__all__ = ["RechargeOutcome", "RechargePolicy", "RechargeService"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RechargePolicy:
    """Timings of recharges and top-up settlement (seconds)."""

    # Delay before retrying after the 1st, 2nd, ... decline; then the recharge fails.
    retry_delays_s: tuple[float, ...] = (60.0, 300.0, 1800.0)
    # How long a sent charge may go unanswered before it is re-asked with the same key.
    answer_timeout_s: float = 60.0
    # How often a pending payment's status is asked.
    settle_poll_s: float = 5.0
    batch: int = 100
    # How often the sweeper looks for accounts left below their threshold.
    sweep_every_s: float = 5.0
    # How long a row (a recharge, or an account to sweep) that failed for a reason that is
    # not an outage waits before it is tried again.
    error_retry_s: float = 300.0

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.retry_delays_s) or self.answer_timeout_s <= 0 \
                or self.settle_poll_s <= 0 or self.batch < 1 or self.sweep_every_s <= 0 \
                or self.error_retry_s <= 0:
            raise ValueError("recharge policy: delays must be >= 0, timeouts > 0, batch >= 1")

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays_s) + 1


_CLAIMABLE = """
SELECT r.id, r.crossing_id, r.account_id, r.amount, r.currency::text AS currency, r.status,
       r.attempt, r.payment_id
FROM recharges r
WHERE r.id = $1 AND r.status IN ('requested', 'charging', 'pending')
  AND r.next_attempt_at <= now()
FOR UPDATE SKIP LOCKED
"""


class RechargeService:
    """The recharge state machine over PostgreSQL; payments through ``provider``."""

    def __init__(self, pool: asyncpg.Pool, provider: PaymentProvider,
                 policy: RechargePolicy | None = None) -> None:
        self._pool = pool
        self._store = AccountStore(pool)
        self._provider = provider
        self.policy = policy or RechargePolicy()
        # Accounts whose sweep failed for a reason that is not an outage: skipped until
        # the first number (monotonic time); the message is logged when it changes.
        self._sweep_failures: dict[str, tuple[float, str]] = {}

    async def on_balance_low(self, account_id: str, crossing_id: str) -> RechargeOutcome:
        """React to one ``balance.low`` crossing; a redelivery of it changes nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            account = await conn.fetchrow(ACCOUNT_SQL + " FOR UPDATE", account_id)
            if account is None:
                return "unknown_account"
            if await conn.fetchval("SELECT 1 FROM recharges WHERE crossing_id = $1",
                                   crossing_id):
                return "duplicate"
            if not account["auto_recharge_enabled"]:
                return "disabled"
            if account["balance"] >= account["low_balance_threshold"]:
                return "not_below"
            # A later crossing is the one to serve (its handler or the sweeper does).
            latest = await latest_crossing(conn, account_id)
            if latest is not None and latest != crossing_id:
                return "superseded"
            requested, recharge_id = await request_recharge(conn, account_id, crossing_id,
                                                            account)
            if recharge_id is None:
                return "duplicate" if requested == "requested" else requested
        return await self._attempt(recharge_id)

    async def sweep(self) -> list[RechargeOutcome]:
        """A recharge for every account left below its threshold with none coming
        (rating/stores/recharge_sweep.py), each sent at once."""
        outcomes: list[RechargeOutcome] = []
        now = time.monotonic()
        for account_id in await due_accounts(self._pool, self.policy.batch):
            failure = self._sweep_failures.get(account_id)
            if failure is not None and failure[0] > now:
                continue
            try:
                requested, recharge_id = await request_due(self._pool, account_id)
            except Exception as exc:
                if is_transient(exc):
                    raise
                outcomes.append(self._sweep_failed(account_id, exc))
                continue
            self._sweep_failures.pop(account_id, None)
            if recharge_id is None:
                outcomes.append("duplicate" if requested == "requested" else requested)
            else:
                outcomes.append(await self._attempt_alone(recharge_id))
        return outcomes

    def _sweep_failed(self, account_id: str, exc: Exception) -> RechargeOutcome:
        message = f"{type(exc).__name__}: {exc}"
        known = self._sweep_failures.get(account_id)
        if known is None or known[1] != message:
            log.error("recharge sweep of %s failed (%s); trying again in %g s", account_id,
                      message, self.policy.error_retry_s, exc_info=exc)
        self._sweep_failures[account_id] = (time.monotonic() + self.policy.error_retry_s,
                                            message)
        return "error"

    async def in_flight(self) -> dict[str, tuple[int, float]]:
        """Recharges not settled yet, by status: (how many, age of the oldest in seconds).

        Each blocks a new recharge for its account until it settles, so one that stays
        in flight for hours (a payment the provider never settles) is worth an alert.
        """
        rows = await self._pool.fetch(
            "SELECT status, count(*) AS n,"
            " extract(epoch FROM now() - min(created_at))::float8 AS oldest_s"
            " FROM recharges WHERE status IN ('requested', 'charging', 'pending')"
            " GROUP BY status")
        return {r["status"]: (r["n"], max(0.0, r["oldest_s"])) for r in rows}

    async def run_due(self) -> list[RechargeOutcome]:
        """Send the attempts that are due: retries after a decline, unanswered charges."""
        return await self._run(("requested", "charging"))

    async def settle_pending(self) -> list[RechargeOutcome]:
        """Ask the provider about pending payments whose poll is due."""
        return await self._run(("pending",))

    async def _run(self, statuses: tuple[str, ...]) -> list[RechargeOutcome]:
        ids = await self._pool.fetch(
            "SELECT id FROM recharges WHERE status = ANY($1::text[]) AND next_attempt_at <= now()"
            " ORDER BY next_attempt_at LIMIT $2", list(statuses), self.policy.batch)
        return [await self._attempt_alone(r["id"]) for r in ids]

    async def _attempt_alone(self, recharge_id: int) -> RechargeOutcome:
        """``_attempt``, where a failure that is not an outage marks the row and goes on."""
        try:
            return await self._attempt(recharge_id)
        except Exception as exc:
            if is_transient(exc):
                raise  # every row would fail alike: the worker's tick waits it out
            message = f"{type(exc).__name__}: {exc}"
            first: bool | None = await self._pool.fetchval(
                """
                UPDATE recharges r
                SET last_error = $2, errors = r.errors + 1, updated_at = now(),
                    next_attempt_at = now() + make_interval(secs => $3)
                FROM (SELECT id, last_error FROM recharges WHERE id = $1) before
                WHERE r.id = before.id AND r.status IN ('requested', 'charging', 'pending')
                RETURNING before.last_error IS DISTINCT FROM $2
                """, recharge_id, message, float(self.policy.error_retry_s))
            if first:
                log.error("recharge %d failed (%s); trying it again in %g s", recharge_id,
                          message, self.policy.error_retry_s, exc_info=exc)
            return "error"

    async def _attempt(self, recharge_id: int) -> RechargeOutcome:
        claim = await self._claim(recharge_id)
        if isinstance(claim, str):
            return claim
        try:
            if claim.status == "pending" and claim.payment_id is not None:
                result = await self._provider.status(claim.payment_id)
            else:
                result = await self._provider.charge(ChargeRequest(
                    claim.account_id, claim.amount, claim.currency, claim.key))
        except UnknownPayment:
            raise  # the provider has no such payment: marked by _attempt_alone, asked later
        except Exception as exc:  # any other provider failure: the claim's expiry asks again
            log.warning("payment provider failed for recharge %s attempt %d (%s);"
                        " asking again later", claim.crossing_id, claim.attempt, describe(exc))
            return "unavailable"
        return await self._record(claim, result)

    async def _claim(self, recharge_id: int) -> RechargeAttempt | RechargeOutcome:
        """Take a due recharge for one attempt; the next one is due when the answer is."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIMABLE, recharge_id)
            if row is None:
                return "busy"
            account = await account_row(conn, row["account_id"])
            claim = RechargeAttempt(row["id"], row["crossing_id"], row["account_id"],
                                    row["amount"], row["currency"].strip(), row["attempt"],
                                    row["status"], row["payment_id"])
            if claim.status == "requested":
                # Nothing was sent for this attempt yet, so it can still be called off.
                reason = None
                if not account["auto_recharge_enabled"]:
                    reason = "cancelled: auto-recharge was turned off"
                elif account["balance"] >= account["low_balance_threshold"]:
                    reason = "cancelled: balance is back at or above the threshold"
                elif account["balance"] + account["auto_recharge_amount"] + (
                        await credit_on_its_way(conn, claim.account_id,
                                                besides_recharge=claim.id)) > BALANCE_BOUND:
                    reason = "cancelled: the balance would exceed its bound"
                if reason is not None:
                    await conn.execute(
                        "UPDATE recharges SET status = 'cancelled', next_attempt_at = NULL,"
                        " last_reason = $2, settled_at = now(), updated_at = now()"
                        " WHERE id = $1", claim.id, reason)
                    await insert_events(conn, [recharge_event(
                        claim, "recharge.failed", "recharge.cancelled", account,
                        {"reason": reason, "final": True, "cancelled": True})])
                    return "cancelled"
                # A retry charges the amount the customer has configured now.
                claim = RechargeAttempt(claim.id, claim.crossing_id, claim.account_id,
                                        account["auto_recharge_amount"], claim.currency,
                                        claim.attempt, claim.status, None)
                if claim.attempt > 1:
                    await insert_events(conn, [recharge_event(
                        claim, "recharge.requested", "recharge.requested", account, {})])
            wait = (self.policy.settle_poll_s if claim.status == "pending"
                    else self.policy.answer_timeout_s)
            await conn.execute(
                "UPDATE recharges SET status = CASE WHEN status = 'requested' THEN 'charging'"
                " ELSE status END, amount = $2,"
                " next_attempt_at = now() + make_interval(secs => $3), updated_at = now()"
                " WHERE id = $1", claim.id, claim.amount, float(wait))
            return claim

    async def _record(self, claim: RechargeAttempt, result: PaymentResult) -> RechargeOutcome:
        if result.status == "succeeded":
            credit = await self._store.credit(
                claim.account_id, kind="recharge", source="recharge", key=claim.crossing_id,
                amount=claim.amount,
                announce={"payment_id": result.payment_id, "crossing_id": claim.crossing_id})
            async with self._pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    "UPDATE recharges SET status = 'succeeded', payment_id = $3,"
                    " next_attempt_at = NULL, settled_at = now(), updated_at = now()"
                    " WHERE id = $1 AND attempt = $2 AND status IN ('charging', 'pending')"
                    " RETURNING 1", claim.id, claim.attempt, result.payment_id)
                if done:
                    account = await account_row(conn, claim.account_id)
                    await insert_events(conn, [recharge_event(
                        claim, "recharge.succeeded", "recharge.succeeded", account,
                        {"payment_id": result.payment_id})])
            if credit.applied:
                log.info("recharge %s credited %s to %s", claim.crossing_id,
                         format_amount(claim.amount), claim.account_id)
            return "succeeded"
        if result.status == "pending":
            await self._pool.execute(
                "UPDATE recharges SET status = 'pending', payment_id = $3,"
                " next_attempt_at = now() + make_interval(secs => $4), updated_at = now()"
                " WHERE id = $1 AND attempt = $2 AND status IN ('charging', 'pending')",
                claim.id, claim.attempt, result.payment_id, float(self.policy.settle_poll_s))
            return "pending"
        return await record_decline(self._pool, claim, result, self.policy.retry_delays_s)


"""A declined recharge attempt: retried after its wait, or the end of automatic recharge.

A soft decline is retried as a new attempt (a new idempotency key) once the wait that
``RATING_RECHARGE_RETRY_SECONDS`` gives that attempt has passed, so a card is never
hammered. A hard decline (``PaymentResult.hard``: a lost, stolen, expired or closed
card), or the last attempt declined, fails the recharge and turns automatic recharge
off: ``recharge.disabled`` says why (``data.reason``: ``hard_decline`` or
``attempts_exhausted``), and it stays off until the customer turns it on again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import asyncpg

from rating.payments.provider import PaymentResult
from rating.stores.outbox import insert_events
from rating.stores.recharge_requests import (
    RechargeAttempt,
    RechargeOutcome,
    account_row,
    recharge_event,
)

log = logging.getLogger(__name__)

DisabledReason = Literal["hard_decline", "attempts_exhausted"]

_RECORD = """
UPDATE recharges
SET status = CASE WHEN $3 THEN 'failed' ELSE 'requested' END,
    attempt = CASE WHEN $3 THEN attempt ELSE attempt + 1 END,
    next_attempt_at = CASE WHEN $3 THEN NULL ELSE now() + make_interval(secs => $4) END,
    settled_at = CASE WHEN $3 THEN now() END,
    payment_id = $5, last_reason = $6, updated_at = now()
WHERE id = $1 AND attempt = $2 AND status IN ('charging', 'pending')
RETURNING coalesce(next_attempt_at, now())
"""

# Turned off only if it is on: a customer who turned it off meanwhile keeps that choice.
_DISABLE = """
UPDATE accounts
SET auto_recharge_enabled = false, auto_recharge_disabled_reason = $2,
    auto_recharge_disabled_at = now(), version = version + 1, updated_at = now()
WHERE id = $1 AND auto_recharge_enabled
RETURNING balance, low_balance_threshold, currency::text AS currency
"""


async def record_decline(pool: asyncpg.Pool, claim: RechargeAttempt, result: PaymentResult,
                         retry_delays_s: Sequence[float]) -> RechargeOutcome:
    """Record a declined attempt: the next one after its wait, or the recharge's end."""
    exhausted = claim.attempt > len(retry_delays_s)
    final = result.hard or exhausted
    delay = 0.0 if final else retry_delays_s[claim.attempt - 1]
    reason = result.reason or "declined"
    why: DisabledReason = "hard_decline" if result.hard else "attempts_exhausted"
    outcome: RechargeOutcome = (
        "declined" if not final else "hard_declined" if result.hard else "failed")
    async with pool.acquire() as conn, conn.transaction():
        # The account's row before the recharge's, as every path that writes both takes them.
        account = await account_row(conn, claim.account_id, lock=True)
        retry_at: datetime | None = await conn.fetchval(
            _RECORD, claim.id, claim.attempt, final, delay, result.payment_id, reason)
        if retry_at is None:  # recorded already by another worker
            return outcome
        extra: dict[str, object] = {
            "reason": reason, "final": final,
            "decline": "hard" if result.hard else "soft", "payment_id": result.payment_id}
        if not final:
            extra["next_attempt_at"] = retry_at.isoformat().replace("+00:00", "Z")
        events = [recharge_event(claim, "recharge.failed", "recharge.failed", account, extra)]
        if final:
            disabled = await conn.fetchrow(_DISABLE, claim.account_id, why)
            if disabled is not None:
                events.append(recharge_event(
                    claim, "recharge.disabled", "recharge.disabled", disabled,
                    {"reason": why, "decline_reason": reason,
                     "payment_id": result.payment_id}))
        await insert_events(conn, events)
    if not final:
        log.info("recharge %s attempt %d declined (%s); retrying in %g s",
                 claim.crossing_id, claim.attempt, reason, delay)
    else:
        log.info("recharge %s attempt %d declined (%s, %s decline): automatic recharge of %s"
                 " turned off (%s)", claim.crossing_id, claim.attempt, reason,
                 "hard" if result.hard else "soft", claim.account_id, why)
    return outcome

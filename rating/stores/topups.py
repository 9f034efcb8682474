"""One-time top-ups: the card is charged first, credit follows only for money actually
taken, and each payment is credited exactly once per ``(account, idempotency key)``.

A payment row is keyed by its two columns; the ledger row and the provider's idempotency
key by ``credit_key(account, key)``, an encoding no other pair shares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import asyncpg

from rating.core.errors import (
    BalanceOutOfBounds,
    IdempotencyConflict,
    InvalidRequest,
    PaymentDeclined,
    PaymentUnavailable,
    RatingError,
    UnknownPayment,
    describe,
)
from rating.core.identifiers import check_account_id, check_text, credit_key
from rating.core.money import BALANCE_BOUND, format_amount
from rating.payments.provider import ChargeRequest, PaymentProvider, PaymentResult
from rating.stores.accounts import Account, AccountStore
from rating.stores.credit_on_its_way import credit_on_its_way
from rating.stores.db import is_transient
from rating.stores.recharges import RechargePolicy

log = logging.getLogger(__name__)


TopupStatus = Literal["succeeded", "pending"]
# ``awaited``: a charge with this key was sent and its answer is not overdue yet.
_PAYMENT = ("SELECT amount, status, reason, payment_id, next_check_at > now() AS awaited"
            " FROM topup_payments WHERE account_id = $1 AND idempotency_key = $2")


@dataclass(frozen=True, slots=True)
class TopupResult:
    status: TopupStatus  # a decline raises PaymentDeclined instead
    account: Account
    credited: bool  # this call credited the account (False: pending, or a replay)
    replay: bool  # the idempotency key had been seen before
    payment_id: str | None


class TopupService:
    """One-time top-ups: charge the card, credit once per ``(account, idempotency key)``."""

    def __init__(self, pool: asyncpg.Pool, provider: PaymentProvider,
                 policy: RechargePolicy | None = None) -> None:
        self._pool = pool
        self._store = AccountStore(pool)
        self._provider = provider
        self.policy = policy or RechargePolicy()
        self.settle_failures = 0  # rows set aside by settle_pending, since start

    @property
    def provider(self) -> PaymentProvider:
        return self._provider

    async def topup(self, account_id: str, amount: int, idempotency_key: str) -> TopupResult:
        """Raises ``PaymentDeclined``, ``PaymentUnavailable`` (ask again with the same key),
        ``IdempotencyConflict`` (key reused for another amount) or ``UnknownAccount``."""
        if amount <= 0:
            raise InvalidRequest("a top-up must be positive", code="invalid_amount")
        if not idempotency_key:
            raise InvalidRequest("an idempotency key is required",
                                 code="invalid_idempotency_key")
        check_text("idempotency key", idempotency_key, max_length=255)
        # An older id outside the rule names an account that can no longer be credited
        # (the CHECK of migration 0005): its card is never charged.
        check_account_id(account_id)
        account = await self._store.get(account_id)
        key = credit_key(account_id, idempotency_key)
        prior, credited_amount = await self._claim(account, amount, idempotency_key)
        if (prior is not None and prior["amount"] != amount) or (
                credited_amount is not None and credited_amount != amount):
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was already used for a different amount")
        if prior is not None and prior["status"] == "declined":
            raise PaymentDeclined(f"payment declined: {prior['reason'] or 'declined'}")
        if credited_amount is not None:
            return TopupResult("succeeded", account, False, True, None)
        if prior is not None and prior["status"] == "requested" and prior["awaited"]:
            # Another request (another replica, the command line) sent this key's charge
            # and awaits its answer: charging again would leave it to the provider to see
            # that both are one payment. Its answer, or the settlement, settles it.
            return TopupResult("pending", account, False, True, None)
        try:
            if prior is not None and prior["status"] == "pending" and prior["payment_id"]:
                # Charged already, waiting for the bank: ask about that payment.
                result = await self._provider.status(prior["payment_id"])
            else:
                result = await self._provider.charge(
                    ChargeRequest(account_id, amount, account.currency, f"topup/{key}"))
        except PaymentDeclined:
            raise
        except Exception as exc:
            log.warning("payment provider failed for top-up %r of %r (%s)",
                        idempotency_key, account_id, describe(exc))
            raise PaymentUnavailable(
                "the payment provider did not answer; retry with the same idempotency key"
            ) from exc
        outcome = await self._record(account_id, idempotency_key, amount, result)
        if outcome is None:
            raise PaymentDeclined(f"payment declined: {result.reason or 'declined'}")
        return TopupResult(outcome[0], outcome[1] or account, outcome[2], prior is not None,
                           result.payment_id)

    async def _claim(self, account: Account, amount: int, idempotency_key: str
                     ) -> tuple[asyncpg.Record | None, int | None]:
        """The key's payment row as it was (None: this call recorded it, and charges),
        and the amount credited under the key before payments were recorded, if any."""
        account_id = account.id
        async with self._pool.acquire() as conn, conn.transaction():
            # A key credited before payments were recorded is a replay, never a new charge.
            credited_amount: int | None = await conn.fetchval(
                "SELECT amount FROM ledger WHERE event_source = 'topup' AND event_id = $1",
                credit_key(account_id, idempotency_key))
            prior = await conn.fetchrow(_PAYMENT, account_id, idempotency_key)
            if prior is not None or credited_amount is not None:
                return prior, credited_amount
            # One new charge of the account at a time past this point, so that two
            # cannot both pass the bound's check with credit the other brings.
            on_the_way = await credit_on_its_way(conn, account_id)
            balance = await conn.fetchval("SELECT balance FROM accounts WHERE id = $1",
                                          account_id)
            if balance + on_the_way + amount > BALANCE_BOUND:
                # Refused before the card is asked: the credit could never land.
                raise BalanceOutOfBounds(
                    f"a top-up of {format_amount(amount)} would take the balance past"
                    f" {format_amount(BALANCE_BOUND)}; nothing was charged")
            inserted = await conn.fetchval(
                "INSERT INTO topup_payments (account_id, idempotency_key, amount, currency,"
                " next_check_at) VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))"
                " ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING id",
                account_id, idempotency_key, amount, account.currency,
                float(self.policy.answer_timeout_s))
            if inserted is None:  # the same key, sent twice at once: the other is first
                prior = await conn.fetchrow(_PAYMENT, account_id, idempotency_key)
        return prior, None

    async def settle_pending(self) -> int:
        """Ask about top-ups left pending or unanswered; return how many settled now.

        Each row is settled on its own. One that fails for a reason of its own (its
        credit refused, a bug) is marked (``failures``, ``last_error``), logged once,
        counted in ``settle_failures``, and asked again later with a growing delay
        (one minute, doubling, at most an hour); the rows behind it are settled
        meanwhile. A database outage stops the round (the rows are due again later).
        """
        rows = await self._pool.fetch(
            """
            UPDATE topup_payments SET next_check_at = now() + make_interval(secs => $2),
                                      updated_at = now()
            WHERE id IN (SELECT id FROM topup_payments
                         WHERE status IN ('requested', 'pending') AND next_check_at <= now()
                         ORDER BY next_check_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING account_id, idempotency_key, amount, currency::text AS currency, status,
                      payment_id, failures
            """, self.policy.batch, float(self.policy.settle_poll_s))
        settled = 0
        for r in rows:
            try:
                if r["status"] == "pending" and r["payment_id"] is not None:
                    result = await self._provider.status(r["payment_id"])
                else:
                    result = await self._provider.charge(ChargeRequest(
                        r["account_id"], r["amount"], r["currency"],
                        "topup/" + credit_key(r["account_id"], r["idempotency_key"])))
            except UnknownPayment as exc:
                # The provider has no such payment: asking at every poll cannot help.
                await self._set_aside(r, exc)
                continue
            except Exception as exc:  # asked again at the next poll
                log.warning("payment provider failed settling top-up %s/%s (%s)",
                            r["account_id"], r["idempotency_key"], describe(exc))
                continue
            try:
                outcome = await self._record(r["account_id"], r["idempotency_key"],
                                             r["amount"], result)
            except Exception as exc:
                if is_transient(exc):
                    raise
                await self._set_aside(r, exc)
                continue
            settled += outcome is None or outcome[0] == "succeeded"
        return settled

    async def _set_aside(self, row: asyncpg.Record, exc: Exception) -> None:
        """Mark a top-up whose settling failed; it is asked again after a growing delay."""
        self.settle_failures += 1
        # The engine's own errors by their stable code, anything else by its type.
        kind = exc.code if isinstance(exc, RatingError) else type(exc).__name__
        error = f"{kind}: {exc}"
        await self._pool.execute(
            "UPDATE topup_payments SET failures = failures + 1, last_error = $3,"
            " next_check_at = now() + least(3600, 60 * power(2, failures)) * interval '1 second',"
            " updated_at = now()"
            " WHERE account_id = $1 AND idempotency_key = $2 AND status <> 'succeeded'",
            row["account_id"], row["idempotency_key"], error.replace("\x00", "\\x00"))
        if row["failures"] == 0:  # logged once; the metric and the row count the rest
            log.error("settling top-up %s/%s failed (%s); marked and asked again later, "
                      "the other top-ups are settled meanwhile", row["account_id"],
                      row["idempotency_key"], error, exc_info=exc)

    async def failing(self) -> int:
        """Unsettled top-ups whose last settling attempt failed."""
        count: int = await self._pool.fetchval(
            "SELECT count(*) FROM topup_payments"
            " WHERE status IN ('requested', 'pending') AND failures > 0")
        return count

    async def _record(self, account_id: str, idempotency_key: str, amount: int,
                      result: PaymentResult) -> tuple[TopupStatus, Account | None, bool] | None:
        """Record the provider's answer; None for a decline."""
        where = " WHERE account_id = $1 AND idempotency_key = $2 AND status <> 'succeeded'"
        if result.status == "succeeded":
            credit = await self._store.credit(
                account_id, kind="topup", source="topup",
                key=credit_key(account_id, idempotency_key),
                amount=amount, announce={"payment_id": result.payment_id})
            await self._pool.execute(
                "UPDATE topup_payments SET status = 'succeeded', payment_id = $3,"
                " next_check_at = NULL, updated_at = now()" + where,
                account_id, idempotency_key, result.payment_id)
            return "succeeded", credit.account, credit.applied
        if result.status == "pending":
            await self._pool.execute(
                "UPDATE topup_payments SET status = 'pending', payment_id = $3,"
                " next_check_at = now() + make_interval(secs => $4), updated_at = now()" + where,
                account_id, idempotency_key, result.payment_id, float(self.policy.settle_poll_s))
            return "pending", None, False
        await self._pool.execute(
            "UPDATE topup_payments SET status = 'declined', payment_id = $3, reason = $4,"
            " next_check_at = NULL, updated_at = now()" + where,
            account_id, idempotency_key, result.payment_id, result.reason or "declined")
        return None

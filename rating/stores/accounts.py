"""Accounts in PostgreSQL: creation, settings, and every credit (top-up, recharge, adjustment).

Every balance change goes through ``credit`` or the usage batch writer: each
writes a ledger row keyed by what caused it, so a retry changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

import asyncpg

from rating.core.errors import (
    AccountExists,
    BalanceOutOfBounds,
    IdempotencyConflict,
    InvalidRequest,
    UnknownAccount,
)
from rating.core.identifiers import check_account_id
from rating.core.money import BALANCE_BOUND, format_amount
from rating.stores.db import Connection, exceeds_balance_bound
from rating.stores.explain import DETAIL_COLUMNS, HAPPENED_AT, detail_of
from rating.stores.outbox import BalanceChange, OutboxEvent, crossing_events, insert_events
from rating.stores.recharge_requests import request_recharge


class UsageTotals(NamedTuple):
    """One service's usage: from credit, accrued for the invoice, events billed, and
    uses (a call or a message counts once however many events it was sent as)."""

    debited: int
    accrued: int
    events: int
    uses: int


SttBilling = Literal["credit", "invoice"]
CreditKind = Literal["topup", "recharge", "adjustment"]


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    plan_id: str
    currency: str
    balance: int
    opening_balance: int
    low_balance_threshold: int
    auto_recharge_enabled: bool
    auto_recharge_amount: int | None
    stt_billing: SttBilling
    version: int
    created_at: datetime
    updated_at: datetime
    # Automatic recharge's limit and why the engine turned it off (CONTRACT §12), and
    # the notification thresholds (balance.alert), highest first.
    auto_recharge_max_per_day: int = 5
    auto_recharge_disabled_reason: str | None = None
    auto_recharge_disabled_at: datetime | None = None
    alert_thresholds: tuple[int, ...] = ()
    held: int = 0  # by open credit reservations: available = balance - held

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Account:
        return cls(
            id=r["id"], plan_id=r["plan_id"], currency=r["currency"], balance=r["balance"],
            opening_balance=r["opening_balance"], low_balance_threshold=r["low_balance_threshold"],
            auto_recharge_enabled=r["auto_recharge_enabled"],
            auto_recharge_amount=r["auto_recharge_amount"], stt_billing=r["stt_billing"],
            version=r["version"], created_at=r["created_at"], updated_at=r["updated_at"],
            auto_recharge_max_per_day=r["auto_recharge_max_per_day"],
            auto_recharge_disabled_reason=r["auto_recharge_disabled_reason"],
            auto_recharge_disabled_at=r["auto_recharge_disabled_at"],
            alert_thresholds=tuple(r["alert_thresholds"]),
            held=r["held"],
        )


@dataclass(frozen=True, slots=True)
class NewAccount:
    id: str
    plan_id: str
    currency: str
    balance: int = 0
    low_balance_threshold: int = 0


@dataclass(frozen=True, slots=True)
class CreditResult:
    account: Account
    applied: bool  # False when the same key had already been credited
    entry_id: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: int
    kind: str
    service: str | None
    event_source: str
    event_id: str
    amount: int
    accrued: int
    currency: str
    country: str | None
    reason: str | None
    event_time: datetime | None
    recorded_at: datetime
    plan_id: str | None = None
    detail: dict[str, object] | None = None  # what priced a usage row (rating.core.detail)


_ACCOUNT_COLUMNS = (
    "id, plan_id, currency, balance, opening_balance, low_balance_threshold,"
    " auto_recharge_enabled, auto_recharge_amount, stt_billing, version, created_at, updated_at,"
    " auto_recharge_max_per_day, auto_recharge_disabled_reason, auto_recharge_disabled_at,"
    " alert_thresholds, held"
)


# The settings change and, in the same statement, whether it started "on and below the
# threshold" (it was not so before); the version counts it as a change of the account.
_TURN_AUTO_RECHARGE_ON = f"""
WITH before AS (
    SELECT id AS account_id, auto_recharge_enabled AND balance < low_balance_threshold AS due
    FROM accounts WHERE id = $1 FOR UPDATE)
UPDATE accounts
SET auto_recharge_enabled = true, auto_recharge_amount = $2, low_balance_threshold = $3,
    auto_recharge_disabled_reason = NULL, auto_recharge_disabled_at = NULL,
    version = version + 1, updated_at = now()
FROM before
WHERE id = before.account_id
RETURNING {_ACCOUNT_COLUMNS}, NOT before.due AND balance < $3 AS recharge_now
"""


class AccountStore:
    """Account operations over an asyncpg pool; the pool's lifecycle is the caller's."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def create(self, new: NewAccount) -> Account:
        check_new_account(new)
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO accounts (id, plan_id, currency, opening_balance, balance,
                                  low_balance_threshold)
            VALUES ($1, $2, $3, $4, $4, $5)
            ON CONFLICT (id) DO NOTHING
            RETURNING {_ACCOUNT_COLUMNS}
            """,
            new.id, new.plan_id, new.currency, new.balance, new.low_balance_threshold)
        if row is None:
            raise AccountExists(f"account {new.id!r} already exists")
        return Account.from_record(row)

    async def create_many(self, accounts: Iterable[NewAccount]) -> tuple[int, int]:
        """Create accounts whose id is new; existing ones stay untouched. -> (created, existing)."""
        batch = list(accounts)
        if not batch:
            return 0, 0
        for new in batch:
            check_new_account(new)
        created = await self._pool.fetchval(
            """
            WITH ins AS (
                INSERT INTO accounts (id, plan_id, currency, opening_balance, balance,
                                      low_balance_threshold)
                SELECT id, plan_id, currency, balance, balance, threshold
                FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
                     AS t(id, plan_id, currency, balance, threshold)
                ON CONFLICT (id) DO NOTHING
                RETURNING 1)
            SELECT count(*) FROM ins
            """,
            [a.id for a in batch], [a.plan_id for a in batch], [a.currency for a in batch],
            [a.balance for a in batch], [a.low_balance_threshold for a in batch])
        return int(created), len(batch) - int(created)

    async def get(self, account_id: str) -> Account:
        return await self._one(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id)

    async def set_auto_recharge(self, account_id: str, *, amount: int | None,
                                below: int | None) -> Account:
        """Turn automatic recharge on (amount and threshold) or off (both None).

        The recharge threshold is the account's low-balance threshold: one number
        decides both when ``balance.low`` is announced and when the card is charged.
        When this change is what puts the account in "on, and below the threshold"
        (turned on, or the threshold raised, with the balance already below it), a
        recharge is requested at once: no crossing is coming to trigger it. The
        recharge worker sends it within a tick.
        """
        if amount is None:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"UPDATE accounts SET auto_recharge_enabled = false, version = version + 1,"
                    f" updated_at = now() WHERE id = $1 RETURNING {_ACCOUNT_COLUMNS}",
                    account_id)
                if row is None:
                    raise UnknownAccount(f"unknown account {account_id!r}")
                # A retry waiting for its time (after a decline) is due now: the recharge
                # worker calls it off at its next tick and says so, rather than showing
                # it "in progress" beside "Off" until the wait is over.
                await conn.execute(
                    "UPDATE recharges SET next_attempt_at = now(), updated_at = now()"
                    " WHERE account_id = $1 AND status = 'requested'"
                    " AND next_attempt_at > now()", account_id)
            return Account.from_record(row)
        if not (0 < amount <= BALANCE_BOUND and below is not None
                and 0 <= below <= BALANCE_BOUND):
            raise InvalidRequest("auto-recharge needs 0 < amount and 0 <= threshold, both"
                                 f" at most {format_amount(BALANCE_BOUND)}",
                                 code="invalid_settings")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_TURN_AUTO_RECHARGE_ON, account_id, amount, below)
            if row is None:
                raise UnknownAccount(f"unknown account {account_id!r}")
            account = Account.from_record(row)
            if row["recharge_now"]:
                # The version makes the id unique to this change of settings.
                await request_recharge(
                    conn, account_id, f"{account_id}:{account.version}:auto-recharge.on", row)
        return account

    async def set_stt_billing(self, account_id: str, mode: SttBilling) -> Account:
        return await self._one(
            f"UPDATE accounts SET stt_billing = $2, updated_at = now()"
            f" WHERE id = $1 RETURNING {_ACCOUNT_COLUMNS}", account_id, mode)

    async def _one(self, sql: str, account_id: str, *args: object) -> Account:
        """The account row ``sql`` returns for ``account_id`` ($1), or ``UnknownAccount``."""
        row = await self._pool.fetchrow(sql, account_id, *args)
        if row is None:
            raise UnknownAccount(f"unknown account {account_id!r}")
        return Account.from_record(row)

    async def credit(self, account_id: str, *, kind: CreditKind, source: str, key: str,
                     amount: int, reason: str | None = None,
                     extra_events: Iterable[OutboxEvent] = (),
                     announce: Mapping[str, str] | None = None) -> CreditResult:
        """Add ``amount`` (negative only for an adjustment) once per ``(source, key)``.

        In the same transaction: the ledger row, the balance, the threshold crossings,
        ``topup.credited`` for money that landed, and any ``extra_events``.
        """
        if kind != "adjustment" and amount <= 0:
            raise InvalidRequest("a credit must be positive", code="invalid_amount")
        if kind == "adjustment" and (amount == 0 or not reason):
            raise InvalidRequest("an adjustment needs a non-zero amount and a reason",
                                 code="invalid_amount")
        async with self._pool.acquire() as conn, conn.transaction():
            account_row = await conn.fetchrow(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1 FOR UPDATE", account_id)
            if account_row is None:
                raise UnknownAccount(f"unknown account {account_id!r}")
            account = Account.from_record(account_row)
            entry_id = await conn.fetchval(
                """
                INSERT INTO ledger (account_id, kind, event_source, event_id, amount, currency,
                                    reason, event_time)
                VALUES ($1, $2, $3, $4, $5, $6, $7, now())
                ON CONFLICT (event_source, event_id) DO NOTHING
                RETURNING entry_id
                """, account_id, kind, source, key, amount, account.currency, reason)
            if entry_id is None:
                return await self._replayed(conn, account, kind, source, key, amount)
            if not -BALANCE_BOUND <= account.balance + amount <= BALANCE_BOUND:
                # Raising undoes the ledger row too. Callers that charge a card check
                # first (nothing is charged); the CHECK of migration 0006 stands behind.
                raise BalanceOutOfBounds(
                    f"the balance of {account_id!r} would leave"
                    f" ±{format_amount(BALANCE_BOUND)}; nothing was credited")
            try:
                row = await conn.fetchrow(
                    f"UPDATE accounts SET balance = balance + $2, version = version + 1,"
                    f" updated_at = now() WHERE id = $1 RETURNING {_ACCOUNT_COLUMNS}",
                    account_id, amount)
            except asyncpg.PostgresError as exc:
                if exceeds_balance_bound(exc):  # nothing of this credit is kept
                    raise BalanceOutOfBounds(
                        f"this would take the balance past {format_amount(BALANCE_BOUND)}"
                        " either way") from exc
                raise
            assert row is not None  # locked above, so it still exists
            after = Account.from_record(row)
            change = BalanceChange(account_id, account.balance, after.balance,
                                   after.low_balance_threshold, after.currency, after.version,
                                   after.alert_thresholds)
            events = list(extra_events)
            if kind in ("topup", "recharge"):
                events.append(OutboxEvent(
                    f"{account_id}:{after.version}:topup.credited", "topup.credited", account_id,
                    after.balance, after.low_balance_threshold, after.currency,
                    {"amount": format_amount(amount), "kind": kind, **(announce or {})}))
            events += crossing_events(change)
            await insert_events(conn, events)
            return CreditResult(after, True, int(entry_id))

    async def _replayed(self, conn: Connection, account: Account, kind: str,
                        source: str, key: str, amount: int) -> CreditResult:
        prior = await conn.fetchrow(
            "SELECT entry_id, account_id, kind, amount FROM ledger"
            " WHERE event_source = $1 AND event_id = $2", source, key)
        if (prior is None or prior["account_id"] != account.id or prior["kind"] != kind
                or prior["amount"] != amount):
            # ``key`` is the credit key (account/key): the caller knows its own part.
            raise IdempotencyConflict(
                f"idempotency key {key.partition('/')[2] or key!r} was already used for a"
                " different request")
        return CreditResult(account, False, int(prior["entry_id"]))

    async def recent_ledger(self, account_id: str, limit: int = 50,
                            before_entry: int | None = None) -> list[LedgerEntry]:
        rows = await self._pool.fetch(
            f"""
            SELECT entry_id, kind, service, event_source, event_id, amount, accrued, currency,
                   country, reason, event_time, recorded_at, plan_id, {DETAIL_COLUMNS}
            FROM ledger WHERE account_id = $1 AND ($3::bigint IS NULL OR entry_id < $3)
            ORDER BY entry_id DESC LIMIT $2
            """, account_id, limit, before_entry)
        return [LedgerEntry(r["entry_id"], r["kind"], r["service"], r["event_source"],
                            r["event_id"], r["amount"], r["accrued"], r["currency"],
                            r["country"], r["reason"], r["event_time"], r["recorded_at"],
                            r["plan_id"], detail_of(r)) for r in rows]

    async def usage_by_service(self, account_id: str, since: datetime | None = None,
                               until: datetime | None = None) -> dict[str, UsageTotals]:
        """service -> totals of the usage that happened in [since, until).

        By when the usage happened (the event's time), as statements count it, not
        when it was billed: usage sent late still belongs to its own day and month.
        """
        rows = await self._pool.fetch(
            f"""
            SELECT service, -sum(amount)::bigint AS debited, sum(accrued)::bigint AS accrued,
                   count(*) AS events,
                   count(DISTINCT (event_source, coalesce(usage_id, event_id))) AS uses
            FROM ledger
            WHERE account_id = $1 AND kind IN ('usage', 'invoice')
              AND ($2::timestamptz IS NULL OR {HAPPENED_AT} >= $2)
              AND ($3::timestamptz IS NULL OR {HAPPENED_AT} < $3)
            GROUP BY service
            """, account_id, since, until)
        return {r["service"]: UsageTotals(r["debited"], r["accrued"], r["events"], r["uses"])
                for r in rows}



def check_new_account(new: NewAccount) -> None:
    """Refuse an account the table must never hold: an id outside the account-id rule,
    an opening balance past ±BALANCE_BOUND, a threshold below 0 or past the bound."""
    check_account_id(new.id)
    if not -BALANCE_BOUND <= new.balance <= BALANCE_BOUND:
        raise BalanceOutOfBounds(f"opening balance of {new.id!r}: at most"
                                 f" ±{format_amount(BALANCE_BOUND)}")
    if not 0 <= new.low_balance_threshold <= BALANCE_BOUND:
        raise InvalidRequest(f"low-balance threshold of {new.id!r}: must be 0.."
                             f"{format_amount(BALANCE_BOUND)}", code="invalid_amount")


def account_json(account: Account) -> dict[str, object]:
    """The public JSON shape of an account (CLI ``accounts show`` and the API)."""
    return {
        "id": account.id,
        "plan": account.plan_id,
        "currency": account.currency,
        "balance": format_amount(account.balance),
        "low_balance_threshold": format_amount(account.low_balance_threshold),
        "auto_recharge": {
            "enabled": account.auto_recharge_enabled,
            "amount": (None if account.auto_recharge_amount is None
                       else format_amount(account.auto_recharge_amount)),
            "below": format_amount(account.low_balance_threshold),
            "max_per_day": account.auto_recharge_max_per_day,
            # Set when declines turned it off (hard_decline | attempts_exhausted).
            "disabled_reason": account.auto_recharge_disabled_reason,
            "disabled_at": (None if account.auto_recharge_disabled_at is None
                            else account.auto_recharge_disabled_at.isoformat()),
        },
        "alert_thresholds": [format_amount(t) for t in account.alert_thresholds],
        "stt_billing": account.stt_billing,
        "opening_balance": format_amount(account.opening_balance),
        "held": format_amount(account.held),
        "available": format_amount(account.balance - account.held),
        "created_at": account.created_at.isoformat(),
        "updated_at": account.updated_at.isoformat(),
    }

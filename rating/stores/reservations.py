"""Credit reservations in PostgreSQL: reserve, extend, release and expire (contract §10).

Each operation is one call of a server-side function (``0007_reservations.sql``): one
round trip, its own transaction (committed without waiting for the WAL flush: see
that file; so never call them inside a transaction that moves money), the account row
locked first and then the reservation row, the order the usage batch debit takes them
in. The grant arithmetic is ``rating.core.reservations.grant_total``, run by the
database under that lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from rating.core.errors import (
    IdempotencyConflict,
    InsufficientCredit,
    ReservationClosed,
    UnknownAccount,
    UnknownReservation,
)
from rating.core.money import format_amount
from rating.core.pricing import Increment, TimedRate

ReservedService = Literal["call", "tollfree"]
Status = Literal["open", "released", "final", "expired"]
# The rate that would price this leg for an account's plan (raises NoRate/UnknownPlan).
RateFor = Callable[[str], TimedRate]


@dataclass(frozen=True, slots=True)
class CallLeg:
    """What a switch reserves for: one call (by source and call id) and how it is priced."""

    source: str
    call_id: str
    service: ReservedService
    number: str  # the destination, or the toll-free number
    direction: str | None = None  # toll-free only: inbound or outbound


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    account_id: str
    leg: CallLeg
    currency: str
    rate: TimedRate
    granted_seconds: int
    granted_amount: int
    used: int
    held: int
    grants: int
    status: Status
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None

    @classmethod
    def from_json(cls, raw: str) -> Reservation:
        """From a row as PostgreSQL's ``to_jsonb`` writes it."""
        r: dict[str, Any] = orjson.loads(raw)
        for name in ("expires_at", "created_at", "closed_at"):
            if r[name] is not None:
                r[name] = datetime.fromisoformat(r[name])
        return cls.from_record(r)

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Reservation:
        return cls(
            reservation_id=r["reservation_id"], account_id=r["account_id"],
            leg=CallLeg(r["event_source"], r["call_id"], r["service"], r["number"],
                        r["direction"]),
            currency=r["currency"].strip(),
            rate=TimedRate(r["rate_per_minute"], r["connect_fee"],
                           Increment(r["increment_first"], r["increment_step"])),
            granted_seconds=r["granted_seconds"], granted_amount=r["granted_amount"],
            used=r["used"], held=r["held"], grants=r["grants"], status=r["status"],
            expires_at=r["expires_at"], created_at=r["created_at"], closed_at=r["closed_at"])


@dataclass(frozen=True, slots=True)
class Outcome:
    """A reservation after an operation, and the account's available credit then."""

    reservation: Reservation
    changed: bool  # False: the same call reserved again, or released already
    available: int


@dataclass(frozen=True, slots=True)
class Expired:
    """What one sweep closed on one account."""

    account_id: str
    expired: int
    freed: int
    currency: str


class ReservationStore:
    """Reservation operations over an asyncpg pool; the pool's lifecycle is the caller's."""

    def __init__(self, pool: asyncpg.Pool, *, cap_seconds: int, grace_seconds: int) -> None:
        self._pool = pool
        self._cap = cap_seconds
        self._grace = grace_seconds

    async def reserve(self, account_id: str, leg: CallLeg, rate_for: RateFor) -> Outcome:
        """The call's reservation: granted now (``changed``), or the one it already has.

        Raises ``InsufficientCredit`` when the available credit does not cover the first
        increment, ``IdempotencyConflict`` when the call was reserved for something else.
        """
        async with self._pool.acquire() as conn:  # one connection for both round trips
            plan_id = await conn.fetchval("SELECT plan_id FROM accounts WHERE id = $1",
                                          account_id)
            if plan_id is None:
                raise UnknownAccount(f"unknown account {account_id!r}")
            rate = rate_for(plan_id)
            row = await conn.fetchrow(
                "SELECT * FROM reservation_open($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
                " $12)", account_id, leg.source, leg.call_id, leg.service, leg.number,
                leg.direction, rate.rate_per_minute, rate.connect_fee, rate.increment.first,
                rate.increment.step, self._cap, self._grace)
        outcome, available, raw = _unpack(row, account_id)
        if outcome == "refused":
            raise InsufficientCredit(
                f"available credit {format_amount(available)} does not cover the first"
                f" increment of this {leg.service}")
        assert raw is not None
        reservation = Reservation.from_json(raw)
        if reservation.account_id != account_id or reservation.leg != leg:
            raise IdempotencyConflict(
                f"call {leg.call_id!r} of {leg.source!r} is already reserved differently"
                f" ({reservation.leg.service} {reservation.leg.number}"
                f" on account {reservation.account_id!r})")
        return Outcome(reservation, outcome == "created", available)

    async def extend(self, account_id: str, reservation_id: str) -> Outcome:
        """Grant up to the cap more seconds; ``InsufficientCredit`` when not one more."""
        row = await self._pool.fetchrow("SELECT * FROM reservation_extend($1, $2, $3)",
                                        account_id, reservation_id, self._cap)
        outcome, available, raw = _unpack(row, account_id, reservation_id)
        assert raw is not None
        reservation = Reservation.from_json(raw)
        if outcome == "closed":
            raise ReservationClosed(
                f"reservation {reservation_id!r} is {reservation.status}: a new call needs a"
                f" reservation of its own (a new call_id)")
        if outcome == "refused":
            raise InsufficientCredit(
                f"available credit {format_amount(available)} does not cover one more"
                f" increment (granted {reservation.granted_seconds} s so far)")
        return Outcome(reservation, True, available)

    async def release(self, account_id: str, reservation_id: str) -> Outcome:
        """Close it and free its hold; releasing a closed one changes nothing."""
        row = await self._pool.fetchrow("SELECT * FROM reservation_release($1, $2)",
                                        account_id, reservation_id)
        outcome, available, raw = _unpack(row, account_id, reservation_id)
        assert raw is not None
        return Outcome(Reservation.from_json(raw), outcome == "released", available)

    async def get(self, account_id: str, reservation_id: str) -> Reservation:
        row = await self._pool.fetchrow(
            "SELECT * FROM reservations WHERE reservation_id = $1 AND account_id = $2",
            reservation_id, account_id)
        if row is None:
            raise UnknownReservation(f"no reservation {reservation_id!r} on this account")
        return Reservation.from_record(dict(row))

    async def expire(self, *, as_of: datetime | None = None, accounts: int = 500,
                     only: str | None = None) -> list[Expired]:
        """Close reservations past their ``expires_at`` (as of now, or ``as_of``) on up to
        ``accounts`` accounts (or on ``only``); call again while it returns that many."""
        rows = await self._pool.fetch(
            "SELECT * FROM reservations_expire(coalesce($1, now()), $2, $3)",
            as_of, accounts, only)
        return [Expired(r["account_id"], r["expired"], r["freed"], r["currency"].strip())
                for r in rows]

    async def due_accounts(self, *, limit: int = 500) -> list[str]:
        """Accounts with an open reservation past its ``expires_at``, by id."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT account_id FROM reservations"
            " WHERE status = 'open' AND expires_at <= now() ORDER BY 1 LIMIT $1", limit)
        return [r["account_id"] for r in rows]

    async def open_totals(self) -> tuple[int, dict[str, int]]:
        """Open reservations, and the credit they hold by currency."""
        rows = await self._pool.fetch(
            "SELECT currency::text, count(*) AS n, sum(held)::bigint AS held"
            " FROM reservations WHERE status = 'open' GROUP BY currency")
        return (sum(r["n"] for r in rows),
                {r["currency"].strip(): r["held"] for r in rows})


def _unpack(row: asyncpg.Record | None, account_id: str, reservation_id: str | None = None,
            ) -> tuple[str, int, str | None]:
    if row is None:  # pragma: no cover  (every function returns one row)
        raise RuntimeError("reservation function returned no row")
    outcome: str = row["outcome"]
    if outcome == "unknown_account":
        raise UnknownAccount(f"unknown account {account_id!r}")
    if outcome == "unknown_reservation":
        raise UnknownReservation(f"no reservation {reservation_id!r} on this account")
    return outcome, row["available"], row["r"]

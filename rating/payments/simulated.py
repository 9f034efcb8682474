"""The simulated card processor: deterministic outcomes chosen by a spec string.

Chosen explicitly (``RATING_PAYMENT_SIMULATION``), never by default in production.
Every account has a deterministic test card (``sample_card``) unless told it has none
or that it is expired (``set_card``); a charge on such an account is declined with
``no_payment_method`` or ``expired_card``.

Payments live in memory, but a delayed one can be answered by any process: its id
says when it settles (``simpay_TAG_N_dueMS``, MS the Unix time in milliseconds), so the
engine settles a payment the command line made, or one made before a restart, as a real
provider would. Any other id it did not make is unknown (``UnknownPayment``). Ids carry
a random tag of the instance, so that a new payment never answers for an old one, as a
real provider's ids never repeat.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rating.core.errors import (
    IdempotencyConflict,
    PaymentUnavailable,
    UnknownPayment,
)
from rating.payments.provider import ChargeRequest, PaymentMethod, PaymentResult, PaymentStatus

SimulatedMode = Literal["succeed", "decline", "hard_decline", "delay", "unavailable"]
SimulatedCard = Literal["test", "none", "expired"]
_BRANDS = ("Visa", "Mastercard", "American Express")


def sample_card(account_id: str, *, expired: bool = False) -> PaymentMethod:
    """The simulated provider's card for ``account_id``: the same for every run."""
    h = hashlib.sha256(account_id.encode("utf-8", "surrogatepass")).digest()
    return PaymentMethod(brand=_BRANDS[h[0] % len(_BRANDS)],
                         last4=f"{int.from_bytes(h[1:3], 'big') % 10_000:04d}",
                         exp_month=1 + h[3] % 12,
                         exp_year=(2021 if expired else 2031) + h[4] % 4)


@dataclass(slots=True)
class SimulatedPayment:
    """One distinct payment the simulated provider made (one per idempotency key)."""

    payment_id: str
    idempotency_key: str
    account_id: str
    amount: int
    currency: str
    status: PaymentStatus
    reason: str | None
    hard: bool  # a hard decline: the card can never be charged
    settles_at: float | None  # monotonic time a pending payment succeeds


# A delayed payment's id, answerable by any process: see the module docstring.
_DUE_ID = re.compile(r"simpay_[0-9a-f]{8}_[0-9]{6,}_due([0-9]{1,400})", re.ASCII)

# What a decline says, as a card processor's decline code would.
_REASONS: dict[str, str] = {"decline": "card_declined", "hard_decline": "card_closed"}


@dataclass(frozen=True, slots=True)
class _Behaviour:
    mode: SimulatedMode
    delay_s: float = 0.0


def _parse_spec(spec: str) -> _Behaviour:
    text = spec.strip()
    if text == "succeed":
        return _Behaviour("succeed")
    if text == "decline":
        return _Behaviour("decline")
    if text == "hard_decline":
        return _Behaviour("hard_decline")
    if text == "unavailable":
        return _Behaviour("unavailable")
    head, sep, tail = text.partition(":")
    if head == "delay" and sep and re.fullmatch(r"[0-9]{1,7}(\.[0-9]{1,6})?", tail, re.ASCII):
        return _Behaviour("delay", float(tail))
    raise ValueError(
        "expected 'succeed', 'decline', 'hard_decline', 'unavailable' or 'delay:SECONDS',"
        f" got {spec!r}")


class SimulatedProvider:
    """A provider in memory: succeeds, declines (softly or hard), or settles after a delay.

    Behaviour is global (``set_behaviour(spec)``) or per account
    (``set_behaviour(spec, account_id=...)``) and applies to charges made after it
    is set. ``payments`` logs every distinct payment, in order; ``charge_calls``
    counts every call, repeated keys included.
    """

    def __init__(self, spec: str = "succeed", *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._default = _parse_spec(spec)
        self._per_account: dict[str, _Behaviour] = {}
        self._cards: dict[str, SimulatedCard] = {}
        self._by_key: dict[str, SimulatedPayment] = {}
        self._by_id: dict[str, SimulatedPayment] = {}
        self._clock = clock
        self._tag = secrets.token_hex(4)  # this instance's payment ids: see the docstring
        self.payments: list[SimulatedPayment] = []
        self.charge_calls = 0

    @classmethod
    def from_spec(cls, spec: str) -> SimulatedProvider:
        """``"succeed"``, ``"decline"``, ``"hard_decline"``, ``"unavailable"`` or
        ``"delay:SECONDS"``."""
        return cls(spec)

    def set_behaviour(self, spec: str, *, account_id: str | None = None) -> None:
        behaviour = _parse_spec(spec)
        if account_id is None:
            self._default = behaviour
        else:
            self._per_account[account_id] = behaviour

    def set_card(self, account_id: str, card: SimulatedCard) -> None:
        """Give ``account_id`` its test card, no card, or an expired one."""
        if card not in ("test", "none", "expired"):
            raise ValueError(f"expected 'test', 'none' or 'expired', got {card!r}")
        self._cards[account_id] = card

    async def payment_method(self, account_id: str) -> PaymentMethod | None:
        card = self._cards.get(account_id, "test")
        return None if card == "none" else sample_card(account_id, expired=card == "expired")

    def _card_problem(self, account_id: str) -> str | None:
        card = self._cards.get(account_id, "test")
        return {"none": "no_payment_method", "expired": "expired_card"}.get(card)

    def captured(self, account_id: str | None = None) -> list[SimulatedPayment]:
        """Payments that took money (succeeded), optionally of one account."""
        return [p for p in self.payments if p.status == "succeeded"
                and (account_id is None or p.account_id == account_id)]

    async def charge(self, request: ChargeRequest) -> PaymentResult:
        self.charge_calls += 1
        if request.amount <= 0:
            raise ValueError("a charge must be positive")
        known = self._by_key.get(request.idempotency_key)
        if known is not None:
            if (known.account_id, known.amount, known.currency) != (
                    request.account_id, request.amount, request.currency):
                raise IdempotencyConflict("idempotency key reused with different parameters",
                                     code="idempotency_conflict")
            return self._result(known)
        behaviour = self._per_account.get(request.account_id, self._default)
        if behaviour.mode == "unavailable":
            raise PaymentUnavailable("simulated payment provider is unavailable")
        status: PaymentStatus = "pending"
        if behaviour.mode == "succeed":
            status = "succeeded"
        elif behaviour.mode in ("decline", "hard_decline"):
            status = "declined"
        reason, hard = _REASONS.get(behaviour.mode), behaviour.mode == "hard_decline"
        card_problem = self._card_problem(request.account_id)
        if card_problem is not None:  # nothing to charge, and retrying cannot help
            status, reason, hard = "declined", card_problem, True
        payment_id = f"simpay_{self._tag}_{len(self.payments) + 1:06d}"
        if behaviour.mode == "delay" and status == "pending":
            due_ms = int((time.time() + behaviour.delay_s) * 1000)
            payment_id += f"_due{due_ms}"
        payment = SimulatedPayment(
            payment_id=payment_id,
            idempotency_key=request.idempotency_key, account_id=request.account_id,
            amount=request.amount, currency=request.currency,
            status=status,
            reason=reason, hard=hard,
            settles_at=(self._clock() + behaviour.delay_s
                        if behaviour.mode == "delay" else None))
        self.payments.append(payment)
        self._by_key[payment.idempotency_key] = payment
        self._by_id[payment.payment_id] = payment
        return self._result(payment)

    async def status(self, payment_id: str) -> PaymentResult:
        payment = self._by_id.get(payment_id)
        if payment is None:
            due = _DUE_ID.fullmatch(payment_id)
            if due is None:
                raise UnknownPayment(f"unknown payment {payment_id!r}")
            # Another process's (or an earlier run's) delayed payment: it says when.
            settled = time.time() * 1000 >= int(due.group(1))
            return PaymentResult("succeeded" if settled else "pending", payment_id)
        return self._result(payment)

    def _result(self, payment: SimulatedPayment) -> PaymentResult:
        if (payment.status == "pending" and payment.settles_at is not None
                and self._clock() >= payment.settles_at):
            payment.status = "succeeded"
        return PaymentResult(payment.status, payment.payment_id, payment.reason, payment.hard)

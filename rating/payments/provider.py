"""The payment-provider interface: charge a saved card, ask a payment's status.

A provider is three calls, like httpx's transport: ``charge``, ``status``, and
``payment_method`` (the saved card a charge would use, for the billing page). Every
charge carries an idempotency key; a provider answers a repeated key with the
payment it already made, never a second charge, so a caller that lost an answer
(timeout, crash) asks again with the same key.

A decline is soft (insufficient funds, a bank's passing refusal: worth another attempt
later) or hard (``PaymentResult.hard``: the card is lost, stolen, expired or closed, so
no later attempt can succeed). That flag is the whole of the interface for it, False by
default: a provider that cannot tell declines apart leaves it unset, and then every
decline is retried at the configured waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

PaymentStatus = Literal["succeeded", "declined", "pending"]


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    account_id: str
    amount: int  # micro-units, > 0
    currency: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class PaymentResult:
    status: PaymentStatus
    payment_id: str
    reason: str | None = None
    # Only with status "declined": retrying this card is pointless (see the module docstring).
    hard: bool = False


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    """A customer's saved card as the provider describes it: never the full number."""

    brand: str  # "Visa", "Mastercard", ...
    last4: str
    exp_month: int  # 1..12
    exp_year: int  # four digits

    def __post_init__(self) -> None:
        if len(self.last4) != 4 or not (self.last4.isascii() and self.last4.isdigit()):
            raise ValueError(f"last4 must be four digits, got {self.last4!r}")
        if not 1 <= self.exp_month <= 12 or not 1000 <= self.exp_year <= 9999:
            raise ValueError(f"bad expiry {self.exp_month}/{self.exp_year}")

    def expired(self, today: date) -> bool:
        """A card is good through the last day of its expiry month."""
        return (today.year, today.month) > (self.exp_year, self.exp_month)

    @property
    def expiry(self) -> str:
        return f"{self.exp_month:02d}/{self.exp_year}"


class PaymentProvider(Protocol):
    """Charges a customer's saved card; a repeated idempotency key is the same payment."""

    async def charge(self, request: ChargeRequest) -> PaymentResult: ...

    async def status(self, payment_id: str) -> PaymentResult: ...

    async def payment_method(self, account_id: str) -> PaymentMethod | None:
        """The card a charge for ``account_id`` would use; None when none is saved."""
        ...

"""The payment-provider interface: charge a saved card, ask a payment's status.

A provider is two calls, like httpx's transport: ``charge`` and ``status``. Every
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


class PaymentProvider(Protocol):
    """Charges a customer's saved card; a repeated idempotency key is the same payment."""

    async def charge(self, request: ChargeRequest) -> PaymentResult: ...

    async def status(self, payment_id: str) -> PaymentResult: ...

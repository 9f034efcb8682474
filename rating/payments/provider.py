"""The payment-provider interface: charge a saved card, ask a payment's status.

A provider is two calls, like httpx's transport: ``charge`` and ``status``. Every
charge carries an idempotency key; a provider answers a repeated key with the
payment it already made, never a second charge, so a caller that lost an answer
(timeout, crash) asks again with the same key.
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


class PaymentProvider(Protocol):
    """Charges a customer's saved card; a repeated idempotency key is the same payment."""

    async def charge(self, request: ChargeRequest) -> PaymentResult: ...

    async def status(self, payment_id: str) -> PaymentResult: ...

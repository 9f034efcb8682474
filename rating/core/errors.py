"""The engine's one error tree; ``code`` is the stable code an error leaves with.

::

    RatingError                      (code: str)
    ├── PermanentError               a usage event that can never be billed: DLQ, with error_code
    │   ├── InvalidEvent             invalid_json | invalid_event | unknown_type
    │   ├── NoRate                   no_rate
    │   ├── UnknownPlan              unknown_plan
    │   ├── ChargeTooLarge           charge_too_large
    │   ├── UnknownAccount           unknown_account    (also the API's 404)
    │   ├── CurrencyMismatch         currency_mismatch  (the plan's currency is not the account's)
    │   ├── BalanceOutOfRange        balance_out_of_range (money.BALANCE_BOUND would be crossed)
    │   └── DebitRefused             debit_refused | debit_failed (the database refused this event)
    ├── RequestError                 a caller's request refused (API 4xx, one CLI line)
    │   ├── ApiError                 any status and code chosen at the HTTP edge
    │   ├── InvalidRequest           invalid_amount | invalid_account | invalid_text | ... (422)
    │   ├── BalanceOutOfBounds       balance_out_of_range (422): a credit past ±BALANCE_BOUND
    │   ├── AccountExists            account_exists (409)
    │   ├── IdempotencyConflict      idempotency_conflict (409)
    │   ├── PaymentDeclined          payment_declined (402)
    │   ├── UnknownPayment           unknown_payment
    │   ├── InsufficientCredit       insufficient_credit (402): no grant, not even one increment
    │   ├── UnknownReservation       unknown_reservation (404)
    │   ├── ReservationClosed        reservation_closed (409): released, final or expired
    │   └── CommandError             a command-line argument or file is unusable
    ├── TransientError               retry later, never DLQ; the API answers 503
    │   ├── StoreUnavailable         store_unavailable  (PostgreSQL down, by SQLSTATE class)
    │   ├── BrokerUnavailable        broker_unavailable (Kafka down)
    │   └── PaymentUnavailable       payment_unavailable (the card processor did not answer)
    ├── TariffError                  tariff_error: tariff files invalid, carries TariffIssue list
    └── SchemaOutdated               schema_outdated: migrations pending that this role cannot apply

The I/O-side classes live here so that the whole tree is in one place; the
modules that talk to PostgreSQL, Kafka and the card processor map library
exceptions onto them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class RatingError(Exception):
    """Base of every error the engine raises on purpose."""

    code: str = "rating_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class PermanentError(RatingError):
    """Retrying cannot help: the event goes to the DLQ with ``code``."""

    code = "permanent_error"


class TransientError(RatingError):
    """A dependency is unavailable: retry the batch, never drop or DLQ it."""

    code = "transient_error"


class InvalidEvent(PermanentError):
    """The bytes are not a valid usage event (``invalid_json``, ``invalid_event``,
    ``unknown_type``)."""

    code = "invalid_event"


class NoRate(PermanentError):
    """The plan has no rate for the destination; prices are never guessed."""

    code = "no_rate"


class UnknownPlan(PermanentError):
    """No such plan, or no version of it in force at the event's time."""

    code = "unknown_plan"


class ChargeTooLarge(PermanentError):
    """One event priced above the per-event limit: an absurd duration or count (or a
    tariff typo), never billed silently, and never allowed to overflow a balance."""

    code = "charge_too_large"


class UnknownAccount(PermanentError):
    """The event's subject is not a known account."""

    code = "unknown_account"


class CurrencyMismatch(PermanentError):
    """The event was priced in a currency other than the account's (a plan's currency
    changed under its accounts): never debited as if the units were the same."""

    code = "currency_mismatch"


class BalanceOutOfRange(PermanentError):
    """Debiting the event would take the balance past ``money.BALANCE_BOUND``."""

    code = "balance_out_of_range"


class DebitRefused(PermanentError):
    """The debit of this one event failed where the rest of its batch succeeded:
    ``debit_refused`` when the database refused its data, ``debit_failed`` otherwise."""

    code = "debit_refused"


class RequestError(RatingError):
    """A caller's request cannot be done as asked; nothing was changed."""

    code = "invalid_request"
    status = 422


class ApiError(RequestError):
    """An error decided at the HTTP edge, with its own status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status


class InvalidRequest(RequestError):
    """A value the caller gave is out of bounds or malformed."""

    code = "invalid_request"


class BalanceOutOfBounds(RequestError):
    """A credit (or an opening balance) would take a balance outside ±``BALANCE_BOUND``;
    refused before any card is charged. The same code as ``BalanceOutOfRange``."""

    code = "balance_out_of_range"


class AccountExists(RequestError):
    code = "account_exists"
    status = 409


class IdempotencyConflict(RequestError):
    """An idempotency key reused with different parameters."""

    code = "idempotency_conflict"
    status = 409


class PaymentDeclined(RequestError):
    """The provider refused the payment; nothing was charged, nothing is credited."""

    code = "payment_declined"
    status = 402


class UnknownPayment(RequestError):
    code = "unknown_payment"
    status = 404


class InsufficientCredit(RequestError):
    """The available credit (balance minus open holds) does not cover one more increment."""

    code = "insufficient_credit"
    status = 402


class UnknownReservation(RequestError):
    code = "unknown_reservation"
    status = 404


class ReservationClosed(RequestError):
    """The reservation was released, finalised by its call's last event, or expired."""

    code = "reservation_closed"
    status = 409


class CommandError(RequestError):
    """A command-line argument or input file cannot be used."""

    code = "command_error"


class StoreUnavailable(TransientError):
    """The ledger database cannot be reached or refused the transaction."""

    code = "store_unavailable"


class BrokerUnavailable(TransientError):
    """The message broker cannot be reached."""

    code = "broker_unavailable"


class PaymentUnavailable(TransientError):
    """The provider could not be reached or did not answer; ask again with the same key."""

    code = "payment_unavailable"


@dataclass(frozen=True, slots=True)
class TariffIssue:
    """One problem in the tariff files, located by file and 1-based line."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class TariffError(RatingError):
    """The tariff files cannot be loaded; ``issues`` lists every problem found."""

    code = "tariff_error"

    def __init__(self, issues: Iterable[TariffIssue]) -> None:
        self.issues: list[TariffIssue] = list(issues)
        summary = "\n".join(str(issue) for issue in self.issues) or "invalid tariffs"
        super().__init__(summary)


class SchemaOutdated(RatingError):
    """The database lacks migrations this engine needs, and its role may not apply them:
    ``rating-engine migrate`` (as a role that owns the schema) has to run first."""

    code = "schema_outdated"


def describe(exc: BaseException) -> str:
    """``Type: message``, or the type alone when the message is empty (a timeout, a
    dropped connection): a log line never says "failed ()"."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

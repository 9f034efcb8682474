"""The engine's one error tree; ``code`` is the stable ``error_code`` of a DLQ record.

::

    RatingError                      (code: str)
    ├── PermanentError               the event can never succeed: send it to the DLQ
    │   ├── InvalidEvent             invalid_json | invalid_event | unknown_type
    │   ├── NoRate                   no_rate
    │   ├── UnknownPlan              unknown_plan
    │   ├── ChargeTooLarge           charge_too_large
    │   └── UnknownAccount           unknown_account    (raised by the ledger side)
    ├── TransientError               retry later, never DLQ
    │   ├── StoreUnavailable         store_unavailable  (PostgreSQL down, by SQLSTATE class)
    │   └── BrokerUnavailable        broker_unavailable (Kafka down)
    └── TariffError                  tariff_error: tariff files invalid, carries TariffIssue list

The I/O-side classes live here so that the whole tree is in one place; the
modules that talk to PostgreSQL and Kafka map library exceptions onto them.
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


class StoreUnavailable(TransientError):
    """The ledger database cannot be reached or refused the transaction."""

    code = "store_unavailable"


class BrokerUnavailable(TransientError):
    """The message broker cannot be reached."""

    code = "broker_unavailable"


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

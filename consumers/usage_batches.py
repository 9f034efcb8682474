"""One polled batch of usage records, decoded and rated in memory (no I/O here).

Every record leaves as a rated usage or as a ``Rejected`` with its DLQ code: a
record that makes decoding or rating fail unexpectedly (a bug) is rejected too
(``internal_error``), so that one event never stops billing for everyone.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from consumers import metrics
from consumers.dead_letters import Rejected
from consumers.kafka_batches import Record
from rating.core.errors import CurrencyMismatch, PermanentError, UnknownAccount
from rating.core.events import CallUsage, TollFreeUsage, UsageEvent, decode_usage_event
from rating.core.rate import rate
from rating.core.tariff import TariffBook
from rating.settings import Settings
from rating.stores.ledger import AccountInfo, RatedUsage
from rating.stores.settlement import Settlement, settles

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedBatch:
    rated: list[RatedUsage]
    rejected: list[Rejected]
    repeated: int = 0  # the same (source, id) more than once in this batch
    rated_records: list[Record] = field(default_factory=list)  # the record of each rated
    # Calls of accounts with open credit reservations: they settle against them.
    settle: list[Settlement] = field(default_factory=list)


def _crashed(record: Record, stage: str, exc: Exception) -> Rejected:
    log.error("%s failed on the record at %s[%d]@%d: %s: %s", stage, record.topic,
              record.partition, record.offset, type(exc).__name__, exc, exc_info=exc)
    return Rejected(record, "internal_error", f"{stage} failed: {type(exc).__name__}: {exc}")


def record_time(record: Record, received: datetime) -> datetime:
    """The Kafka record's timestamp (the producer's or the broker's), else ``received``."""
    stamp = record.timestamp
    if stamp is None or stamp < 0:
        return received
    return datetime.fromtimestamp(stamp / 1000, UTC)


def decode_all(records: Sequence[Record], types: Counter[str] | None = None,
               ) -> tuple[list[tuple[Record, UsageEvent]], list[Rejected]]:
    """Decode ``records``; the count of each type goes to ``types`` when given (the caller
    then reports it once per batch), else to the metric at once."""
    decoded: list[tuple[Record, UsageEvent]] = []
    rejected: list[Rejected] = []
    report = types is None
    if types is None:
        types = Counter()
    for record in records:
        try:
            if record.value is None:
                raise PermanentError("the record has no value (a Kafka tombstone)",
                                     code="invalid_event")
            event = decode_usage_event(record.value)
        except PermanentError as exc:
            rejected.append(Rejected(record, exc.code, exc.message))
            types["invalid"] += 1
            continue
        except Exception as exc:
            rejected.append(_crashed(record, "decoding", exc))
            types["invalid"] += 1
            continue
        types[f"usage.{event.service}"] += 1
        decoded.append((record, event))
    if report:
        count_consumed(types)
    return decoded, rejected


def count_consumed(types: Counter[str]) -> None:
    for type_, n in types.items():
        metrics.EVENTS_CONSUMED.labels(type_).inc(n)


def rate_into(batch: PreparedBatch, seen: set[tuple[str, str]],
              decoded: Sequence[tuple[Record, UsageEvent]], accounts: dict[str, AccountInfo],
              book: TariffBook, received: datetime) -> None:
    """Pure rating of (part of) a batch into ``batch``; ``seen`` spans the whole batch.

    The price version is chosen by the event's time, or by its record's timestamp
    when it has none (``rate`` takes a call's ``started_at`` first), and the ledger
    stores that same time.
    """
    for record, event in decoded:
        key = (event.source, event.event_id)
        if key in seen:  # the ledger would ignore it too; skip the work
            batch.repeated += 1
            continue
        seen.add(key)
        account = accounts.get(event.account_id)
        when = event.time if event.time is not None else record_time(record, received)
        try:
            if account is None:
                raise UnknownAccount(f"unknown account {event.account_id!r}")
            charge = rate(event, book, account.plan_id, when)
            if charge.currency != account.currency:
                raise CurrencyMismatch(
                    f"plan {account.plan_id!r} priced this event in {charge.currency}, but "
                    f"account {event.account_id!r} holds {account.currency}")
        except PermanentError as exc:
            batch.rejected.append(Rejected(record, exc.code, exc.message))
            continue
        except Exception as exc:
            batch.rejected.append(_crashed(record, "rating", exc))
            continue
        on_invoice = event.service == "stt" and account.stt_billing == "invoice"
        if (account.reserving and isinstance(event, CallUsage | TollFreeUsage)
                and settles(event.call_id)):
            batch.settle.append(Settlement(event.source, event.event_id, event.account_id,
                                           event.call_id, charge.amount, event.final))
            # Carried on the row too, so that a batch split to isolate a poison event
            # (consumers/debit_isolation.py) still settles each half's calls.
            batch.rated.append(RatedUsage(charge, when, on_invoice, event.call_id,
                                          event.final))
        else:
            batch.rated.append(RatedUsage(charge, when, on_invoice))
        batch.rated_records.append(record)


def fetch_settings(settings: Settings) -> dict[str, int]:
    """How the usage consumer fetches: a whole batch per poll, large fetches.

    Its group session is 6 s, the least a Kafka broker accepts by default
    (group.min.session.timeout.ms): a member that died is replaced sooner than with
    aiokafka's 10 s, and the embedded broker, which holds a group's first join for
    half the session, lets the engine commit its first batch seconds earlier.
    """
    return {"max_poll_records": settings.batch_max_events,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "fetch_max_bytes": 64 * 1024 * 1024, "max_partition_fetch_bytes": 16 * 1024 * 1024,
            "session_timeout_ms": 6_000, "heartbeat_interval_ms": 2_000}

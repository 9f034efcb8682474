"""Publishing refused usage records to the dead-letter topic: it always accepts.

A refused record goes to the DLQ with its original key and bytes and the headers
``error``, ``error_code``, ``source_topic``, ``source_partition`` and
``source_offset``. Some records cannot be published as they are, and are published
in a form that can be:

- a tombstone: published as one (a null value) with ``value_null: true``; one with a
  null key as well cannot be (a Kafka record needs a key or a value), so its value is
  empty, still with ``value_null: true``;
- a value over ``MAX_VALUE_BYTES``: its first ``MAX_VALUE_BYTES`` bytes, with
  ``value_truncated: true``, ``original_size`` and ``original_sha256`` (hex);
- a key over ``MAX_KEY_BYTES``: truncated the same way (``key_truncated``,
  ``original_key_size``, ``original_key_sha256``);
- every header value at most ``MAX_HEADER_BYTES`` bytes (``error`` may quote a field).

A record the broker still refuses for a reason of its own (too large for a topic
configured smaller, corrupt) is sent once more without its value; refused again, it
is kept whole in PostgreSQL (``dead_letters``, rating/stores/dead_letters.py). A
record published cut (its value or key truncated, or sent without its value) is kept
whole there too, so no refused byte is ever lost. An outage of the broker is waited
out; records already accepted are not sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers import metrics
from consumers.kafka_batches import Record
from consumers.retry import (
    Backoff,
    StoppedWhileRetrying,
    retry_transient,
    transient_dependency,
)
from rating.core.errors import describe
from rating.stores.db import connection
from rating.stores.dead_letters import StoredDeadLetter, keep_dead_letters

log = logging.getLogger(__name__)

# The largest record the engine's producer sends: aiokafka's default max_request_size,
# which engine/services.kafka_producer keeps (a broker's default message size is 1 MB too).
PRODUCER_MAX_REQUEST_BYTES = 1_048_576
MAX_KEY_BYTES = 1024
MAX_HEADER_BYTES = 1024
# Everything else a dead letter carries (a key and header values of at most 1 KiB each,
# header names, the record's framing) fits in what is left: any value up to this size is
# published unchanged, and only a larger one is cut.
MAX_VALUE_BYTES = PRODUCER_MAX_REQUEST_BYTES - 16 * 1024

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A usage record that can never be billed, and why."""

    record: Record
    code: str
    reason: str


def bounded_text(text: str, limit: int = MAX_HEADER_BYTES) -> bytes:
    """``text`` as UTF-8, cut to ``limit`` bytes on a character boundary ("…" marks a cut)."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data
    cut = data[:limit - 3].decode("utf-8", "ignore").encode()
    return cut + "…".encode()


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


def dead_letter(item: Rejected, *, without_value: bool = False
                ) -> tuple[bytes | None, bytes | None, Headers]:
    """The key, value and headers ``item`` is published with (see the module docstring)."""
    record = item.record
    headers: Headers = [
        ("error", bounded_text(item.reason)), ("error_code", bounded_text(item.code)),
        ("source_topic", bounded_text(record.topic)),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    value = record.value
    if value is None:
        headers.append(("value_null", b"true"))
        if record.key is None:
            value = b""  # key and value both null: no record carries that
    elif without_value or len(value) > MAX_VALUE_BYTES:
        headers += [("value_truncated", b"true"), ("original_size", str(len(value)).encode()),
                    ("original_sha256", _digest(value))]
        value = b"" if without_value else value[:MAX_VALUE_BYTES]
    key = record.key
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers += [("key_truncated", b"true"), ("original_key_size", str(len(key)).encode()),
                    ("original_key_sha256", _digest(key))]
        key = key[:MAX_KEY_BYTES]
    return key, value, headers


def _cut_to_fit(item: Rejected) -> str:
    """Why ``dead_letter`` cuts the record to fit the DLQ topic, or "" if it does not."""
    value, key = item.record.value, item.record.key
    cut = [f"{what} of {len(data)} bytes" for what, data, limit in (
        ("value", value, MAX_VALUE_BYTES), ("key", key, MAX_KEY_BYTES))
        if data is not None and len(data) > limit]
    return f"published to the DLQ topic cut: {' and '.join(cut)}" if cut else ""


def _reshaped(item: Rejected) -> list[str]:
    value, key = item.record.value, item.record.key
    return [how for how, applies in (
        ("null_value", value is None),
        ("value_truncated", value is not None and len(value) > MAX_VALUE_BYTES),
        ("key_truncated", key is not None and len(key) > MAX_KEY_BYTES),
        ("error_truncated", len(item.reason.encode("utf-8", "backslashreplace"))
         > MAX_HEADER_BYTES),
    ) if applies]


# How far a record has gone: published as dead_letter() makes it, then without its
# value, then kept in PostgreSQL.
_AS_IS, _WITHOUT_VALUE, _STORE = 0, 1, 2


class DeadLetterPublisher:
    """Publishes refused records to ``topic``; ``publish`` returns once each is kept."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, pool: asyncpg.Pool) -> None:
        self._producer = producer
        self._topic = topic
        self._pool = pool

    async def publish(self, items: Sequence[Rejected], stopping: asyncio.Event) -> None:
        """Every item in the DLQ (or its overflow store), or ``StoppedWhileRetrying``."""
        for item in items:
            for how in _reshaped(item):
                metrics.DLQ_RESHAPED.labels(how).inc()
        stage = dict.fromkeys(range(len(items)), _AS_IS)
        reasons: dict[int, str] = {}
        # Published without all of their bytes: kept whole in the store too, once sent.
        cut = {i: why for i, item in enumerate(items) if (why := _cut_to_fit(item))}
        backoff = Backoff(0.1, 5.0)
        while stage:
            stored = [i for i, level in stage.items() if level == _STORE]
            if stored:
                await self._store([items[i] for i in stored], [reasons[i] for i in stored],
                                  stopping)
                for i in stored:
                    del stage[i]
                    cut.pop(i, None)
                continue
            for i, level in stage.items():
                if level == _WITHOUT_VALUE and items[i].record.value:
                    cut[i] = f"sent to the DLQ topic without its value ({reasons[i]})"
            outage = await self._send_round(items, stage, reasons)
            if outage is not None and _STORE not in stage.values():
                metrics.TRANSIENT_ERRORS.labels("kafka").inc()
                log.warning("DLQ publish failed (%s); retrying", describe(outage))
                if stopping.is_set():
                    raise StoppedWhileRetrying("DLQ publish")
                await backoff.wait(stopping)
        if cut:
            await self._store([items[i] for i in cut], list(cut.values()), stopping,
                              in_topic=True)

    async def _send_round(self, items: Sequence[Rejected], stage: dict[int, int],
                          reasons: dict[int, str]) -> BaseException | None:
        """Send every item still in ``stage`` once: the sent leave it, those refused for
        their own fault move to their next form; returns an outage if there was one."""
        sending = list(stage)
        # Handed to the producer one after the other, in order (thousands of concurrent
        # sends starve its accumulator until the batches time out); acknowledged together.
        pending: list[asyncio.Future[object] | BaseException] = []
        down: BaseException | None = None  # the broker is out: the rest waits a round
        for i in sending:
            if down is not None:
                pending.append(down)
                continue
            key, value, headers = dead_letter(items[i], without_value=stage[i] == _WITHOUT_VALUE)
            try:
                pending.append(await self._producer.send(self._topic, value=value, key=key,
                                                         headers=headers))
            except Exception as exc:
                pending.append(exc)
                if transient_dependency(exc) == "kafka":
                    down = exc
        outcomes = await asyncio.gather(*(_settled(p) for p in pending))
        outage: BaseException | None = None
        for i, outcome in zip(sending, outcomes, strict=True):
            if outcome is None:
                del stage[i]
            elif isinstance(outcome, asyncio.CancelledError):
                raise outcome
            elif transient_dependency(outcome) == "kafka":
                outage = outcome
            else:  # this record's own fault: the next, smaller form
                reasons[i] = f"{type(outcome).__name__}: {outcome}"
                stage[i] += 1
                record = items[i].record
                log.warning("DLQ refused the record from %s[%d]@%d (%s); %s", record.topic,
                            record.partition, record.offset, reasons[i],
                            "sending it without its value" if stage[i] == _WITHOUT_VALUE
                            else "keeping it in the dead_letters table")
        return outage

    async def _store(self, items: list[Rejected], reasons: list[str],
                     stopping: asyncio.Event, *, in_topic: bool = False) -> None:
        """Keep ``items`` whole in PostgreSQL: those the DLQ topic would not take, or
        (``in_topic``) those it took cut."""
        letters = [StoredDeadLetter(i.record.topic, i.record.partition, i.record.offset,
                                    i.record.key, i.record.value, i.code, i.reason, reason)
                   for i, reason in zip(items, reasons, strict=True)]

        async def keep() -> None:
            async with connection(self._pool) as conn:
                await keep_dead_letters(conn, letters)

        await retry_transient(keep, what="dead-letter store", stopping=stopping)
        if in_topic:  # in the DLQ already (counted by rating_dlq_reshaped_total)
            for letter in letters:
                log.warning("kept the whole refused record from %s[%d]@%d in the "
                            "dead_letters table: %s", letter.source_topic,
                            letter.source_partition, letter.source_offset,
                            letter.publish_error)
            return
        metrics.DEAD_LETTERS_STORED.inc(len(letters))
        for letter in letters:
            log.error("kept the refused record from %s[%d]@%d in the dead_letters table: "
                      "the DLQ would not take it (%s)", letter.source_topic,
                      letter.source_partition, letter.source_offset, letter.publish_error)


async def _settled(sent: asyncio.Future[object] | BaseException) -> BaseException | None:
    """None once the broker acknowledged, else why not."""
    if isinstance(sent, BaseException):
        return sent
    try:
        await sent
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
    return None

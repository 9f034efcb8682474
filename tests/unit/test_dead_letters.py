"""The DLQ always accepts: every refused record in a form the broker takes."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from consumers.dead_letters import (
    MAX_HEADER_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    PRODUCER_MAX_REQUEST_BYTES,
    DeadLetterPublisher,
    Rejected,
    bounded_text,
    dead_letter,
)


def record(value: bytes | None, key: bytes | None = b"acct-1",
           offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("usage.events", 3, offset, 0, 0, key, value, None,
                          len(key or b""), len(value or b""), [])


def headers_of(key_value_headers: tuple[bytes | None, bytes, list[tuple[str, bytes]]]
               ) -> dict[str, bytes]:
    return dict(key_value_headers[2])


def test_an_ordinary_record_keeps_its_key_bytes_and_the_contract_headers() -> None:
    key, value, headers = dead_letter(Rejected(record(b'{"x":1}'), "invalid_event", "why"))
    assert (key, value) == (b"acct-1", b'{"x":1}')
    assert headers == [("error", b"why"), ("error_code", b"invalid_event"),
                       ("source_topic", b"usage.events"), ("source_partition", b"3"),
                       ("source_offset", b"7")]


def test_a_large_record_the_producer_can_send_goes_unchanged() -> None:
    body = b"x" * 600_000  # over half a megabyte: still the original bytes
    _key, value, headers = dead_letter(Rejected(record(body), "unknown_account", "why"))
    assert value == body and "value_truncated" not in dict(headers)


def test_the_largest_dead_letter_fits_the_producers_request_size() -> None:
    """Everything at its bound (value, key, every header): aiokafka's own estimate of
    the record, as its producer checks it before sending, is within max_request_size."""
    item = Rejected(record(b"x" * (2 * 1024 * 1024), key=b"k" * 5000), "c" * 5000, "e" * 5000)
    key, value, headers = dead_letter(item)
    assert len(value) == MAX_VALUE_BYTES
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    assert size <= PRODUCER_MAX_REQUEST_BYTES


def test_a_tombstone_goes_as_one_and_says_so() -> None:
    key, value, headers = dead_letter(Rejected(record(None, key=b"acct-1"), "invalid_event", "t"))
    assert key == b"acct-1" and value is None  # unchanged: a null value
    assert dict(headers)["value_null"] == b"true"
    # With a null key too no Kafka record can carry it: an empty value, said so.
    key, value, headers = dead_letter(Rejected(record(None, key=None), "invalid_event", "t"))
    assert key is None and value == b""
    assert dict(headers)["value_null"] == b"true"


def test_an_oversized_value_is_truncated_with_its_size_and_digest() -> None:
    body = b"x" * (2 * 1024 * 1024)
    _key, value, headers = dead_letter(Rejected(record(body), "invalid_json", "too big"))
    found = dict(headers)
    assert value == body[:MAX_VALUE_BYTES]
    assert found["value_truncated"] == b"true"
    assert found["original_size"] == str(len(body)).encode()
    assert found["original_sha256"] == hashlib.sha256(body).hexdigest().encode()


def test_an_oversized_key_and_a_huge_error_are_bounded() -> None:
    huge_key = b"k" * 100_000
    reason = "data.destination: not an E.164 number: " + "é" * 500_000
    key, _value, headers = dead_letter(Rejected(record(b"{}", key=huge_key), "invalid_event",
                                                reason))
    found = dict(headers)
    assert key == huge_key[:MAX_KEY_BYTES]
    assert found["original_key_sha256"] == hashlib.sha256(huge_key).hexdigest().encode()
    assert len(found["error"]) <= MAX_HEADER_BYTES
    found["error"].decode("utf-8")  # cut on a character boundary
    assert sum(len(v) for v in found.values()) < 4096


def test_bounded_text_marks_a_cut() -> None:
    assert bounded_text("short") == b"short"
    cut = bounded_text("a" * 5000, 100)
    assert len(cut) <= 100 and cut.endswith("…".encode())


class FakeProducer:
    """Refuses records by key as told; counts what it accepted."""

    def __init__(self, refuse: dict[bytes | None, list[BaseException]]) -> None:
        self.refuse = refuse
        self.accepted: list[tuple[bytes | None, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        errors = self.refuse.get(key)
        if errors:
            future.set_exception(errors.pop(0))
        else:
            self.accepted.append((key, value))
            future.set_result(None)
        return future


async def test_a_broker_outage_resends_only_the_records_not_yet_accepted() -> None:
    producer = FakeProducer({b"b": [KafkaConnectionError("down"), KafkaConnectionError("down")]})
    publisher = DeadLetterPublisher(producer, "dlq", pool=None)  # type: ignore[arg-type]
    items = [Rejected(record(b"1", key=k), "invalid_json", "x") for k in (b"a", b"b", b"c")]
    await publisher.publish(items, asyncio.Event())
    assert sorted(k for k, _ in producer.accepted) == [b"a", b"b", b"c"]  # each once


async def test_a_record_the_broker_refuses_is_sent_again_without_its_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer({b"a": [MessageSizeTooLargeError("too large")]})
    publisher = DeadLetterPublisher(producer, "dlq", pool=None)  # type: ignore[arg-type]
    kept: list[tuple[list[bytes | None], list[str], bool]] = []

    async def store(items: list[Rejected], reasons: list[str], stopping: asyncio.Event,
                    *, in_topic: bool = False) -> None:
        kept.append(([i.record.value for i in items], reasons, in_topic))

    monkeypatch.setattr(publisher, "_store", store)
    await publisher.publish([Rejected(record(b"{...}", key=b"a"), "invalid_json", "x")],
                            asyncio.Event())
    assert producer.accepted == [(b"a", b"")]
    # ... and, its value missing from the topic, kept whole in the store.
    assert kept == [([b"{...}"], ["sent to the DLQ topic without its value "
                                  "(MessageSizeTooLargeError: [Error 10] "
                                  "MessageSizeTooLargeError: too large)"], True)]

"""dlq replay's sending: one record the broker refuses for its size never stops the rest."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from consumers.dlq_replay import _republish
from rating.core.dlq import DlqRecord
from rating.core.errors import BrokerUnavailable


def record(offset: int, value: bytes) -> DlqRecord:
    return DlqRecord.of(0, offset, None, b"acct-1", value, [])


class Producer:
    """Too large at once (the producer's own limit), or later (the broker's)."""

    def __init__(self, broker_error: Exception | None = None) -> None:
        self.sent: list[bytes] = []
        self._broker_error = broker_error

    async def send(self, topic: str, *, value: bytes, key: bytes) -> asyncio.Future[Any]:
        if len(value) > 10:
            raise MessageSizeTooLargeError("over max_request_size")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if value == b"broker-big" and self._broker_error is not None:
            future.set_exception(self._broker_error)
        else:
            self.sent.append(value)
            future.set_result(None)
        return future


async def test_records_too_large_are_returned_and_the_others_sent() -> None:
    producer = Producer(MessageSizeTooLargeError("broker: message.max.bytes"))
    records = [record(1, b"a"), record(2, b"x" * 11), record(3, b"broker-big"),
               record(4, b"b")]
    refused = await _republish(producer, "usage.events", records)  # type: ignore[arg-type]
    assert [r.offset for r in refused] == [2, 3]
    assert producer.sent == [b"a", b"b"]


async def test_an_outage_still_stops_the_replay() -> None:
    producer = Producer(KafkaConnectionError("down"))
    with pytest.raises(BrokerUnavailable):
        await _republish(producer, "usage.events",  # type: ignore[arg-type]
                         [record(1, b"broker-big")])

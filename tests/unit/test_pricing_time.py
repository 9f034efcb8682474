"""Which price version prices an event: a call's start, else its time, else its record's."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from rating.core.errors import InvalidEvent
from rating.core.events import CallUsage, TollFreeUsage, decode_usage_event
from rating.core.rate import priced_at, rate
from rating.tariffbook.files import load_tariffs
from tests.support import REPO

BOOK = load_tariffs(REPO / "tests" / "fixtures" / "tariffs")
# standard: 60/60 increments until 2027-01-01, 60/1 (and +5%) from then on.
BEFORE = "2026-12-31T23:59:00Z"
AFTER = "2027-01-01T00:05:00Z"


def call(data: dict[str, object], time: str | None = AFTER,
         type_: str = "usage.call") -> bytes:
    event: dict[str, object] = {"specversion": "1.0", "id": "e1", "source": "s",
                                "type": type_, "subject": "acct-1",
                                "data": {"call_id": "c1", "from_s": 60, "to_s": 90, **data}}
    if time is not None:
        event["time"] = time
    return orjson.dumps(event)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_call_that_started_before_a_new_version_is_priced_by_the_old_one() -> None:
    started = decode_usage_event(call({"destination": "+442071234567",
                                       "started_at": BEFORE}))
    assert isinstance(started, CallUsage) and started.started_at == at(BEFORE)
    plain = decode_usage_event(call({"destination": "+442071234567"}))
    old = decode_usage_event(call({"destination": "+442071234567"}, time=BEFORE))
    assert priced_at(started) == at(BEFORE)
    assert rate(started, BOOK, "standard").amount == rate(old, BOOK, "standard").amount
    assert rate(started, BOOK, "standard").amount != rate(plain, BOOK, "standard").amount


def test_a_tollfree_call_may_carry_its_start_too() -> None:
    event = decode_usage_event(call({"tollfree_number": "+448001234567",
                                     "direction": "inbound", "started_at": BEFORE},
                                    type_="usage.tollfree"))
    assert isinstance(event, TollFreeUsage) and priced_at(event) == at(BEFORE)


def test_an_event_without_time_is_priced_at_the_time_given_for_it() -> None:
    event = decode_usage_event(call({"destination": "+442071234567"}, time=None))
    assert priced_at(event) is None
    assert priced_at(event, at(BEFORE)) == at(BEFORE)
    old = decode_usage_event(call({"destination": "+442071234567"}, time=BEFORE))
    new = decode_usage_event(call({"destination": "+442071234567"}, time=AFTER))
    assert rate(event, BOOK, "standard", at(BEFORE)).amount == rate(old, BOOK,
                                                                    "standard").amount
    assert rate(event, BOOK, "standard", at(AFTER)).amount == rate(new, BOOK,
                                                                   "standard").amount


def test_an_events_own_time_wins_over_the_record_time() -> None:
    event = decode_usage_event(call({"destination": "+442071234567"}, time=BEFORE))
    assert priced_at(event, datetime(2030, 1, 1, tzinfo=UTC)) == at(BEFORE)


@pytest.mark.parametrize(("started_at", "message"), [
    ("yesterday", "data.started_at: not an RFC 3339 timestamp"),
    (1700000000, "data.started_at: must be an RFC 3339 string"),
    ("2027-01-01T00:06:00Z", "data.started_at: after the event's time"),
])
def test_a_bad_started_at_is_an_invalid_event(started_at: object, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_usage_event(call({"destination": "+442071234567", "started_at": started_at}))
    assert caught.value.code == "invalid_event" and message in caught.value.message


def test_the_schemas_take_started_at_as_the_decoder_does() -> None:
    import json

    from jsonschema import Draft202012Validator

    for type_, data in (("usage.call", {"destination": "+442071234567"}),
                        ("usage.tollfree", {"tollfree_number": "+448001234567",
                                            "direction": "inbound"})):
        schema = json.loads((REPO / "schemas" / f"{type_}.json").read_text())
        validator = Draft202012Validator(schema)
        good = orjson.loads(call({**data, "started_at": BEFORE}, type_=type_))
        bad = orjson.loads(call({**data, "started_at": "yesterday"}, type_=type_))
        assert validator.is_valid(good) and decode_usage_event(orjson.dumps(good))
        assert not validator.is_valid(bad)
        with pytest.raises(InvalidEvent):
            decode_usage_event(orjson.dumps(bad))

"""Decoding usage events at the edge: every field checked, every rejection typed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from rating.core.errors import InvalidEvent
from rating.core.events import CallUsage, SmsUsage, SttUsage, TollFreeUsage, decode_usage_event


def event(type_: str = "usage.call", **data: Any) -> dict[str, Any]:
    defaults: dict[str, dict[str, Any]] = {
        "usage.call": {"call_id": "c-9", "destination": "+442071234567", "from_s": 0, "to_s": 60},
        "usage.tollfree": {
            "call_id": "c-1",
            "tollfree_number": "+18005550100",
            "direction": "inbound",
            "from_s": 0,
            "to_s": 30,
        },
        "usage.sms": {"message_id": "m-1", "destination": "+33612345678", "segments": 2},
        "usage.stt": {"job_id": "j-1", "seconds": 95},
    }
    payload = {**defaults.get(type_, {}), **data}
    return {
        "specversion": "1.0",
        "id": "evt-000123",
        "source": "switch-eu-1",
        "type": type_,
        "time": "2026-11-25T10:00:00Z",
        "subject": "acct-42",
        "data": {k: v for k, v in payload.items() if v is not DROP},
    }


DROP = object()


def encode(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_decodes_call() -> None:
    decoded = decode_usage_event(encode(event(final=True)))
    assert decoded == CallUsage(
        event_id="evt-000123",
        source="switch-eu-1",
        account_id="acct-42",
        time=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        call_id="c-9",
        destination="+442071234567",
        from_s=0,
        to_s=60,
        final=True,
    )
    assert decoded.service == "call"


def test_decodes_tollfree() -> None:
    decoded = decode_usage_event(encode(event("usage.tollfree", direction="outbound")))
    assert isinstance(decoded, TollFreeUsage)
    assert (decoded.direction, decoded.tollfree_number, decoded.to_s) == (
        "outbound",
        "+18005550100",
        30,
    )
    assert decoded.final is False
    assert decoded.service == "tollfree"


def test_decodes_sms_with_segments_and_with_text() -> None:
    given = decode_usage_event(encode(event("usage.sms")))
    assert isinstance(given, SmsUsage)
    assert given.segments == 2
    assert given.service == "sms"
    counted = decode_usage_event(encode(event("usage.sms", segments=DROP, text="a" * 161)))
    assert isinstance(counted, SmsUsage)
    assert counted.segments == 2
    unicode = decode_usage_event(encode(event("usage.sms", segments=DROP, text="ж" * 71)))
    assert isinstance(unicode, SmsUsage)
    assert unicode.segments == 2


def test_decodes_stt() -> None:
    decoded = decode_usage_event(encode(event("usage.stt")))
    assert isinstance(decoded, SttUsage)
    assert (decoded.job_id, decoded.seconds, decoded.service) == ("j-1", 95, "stt")


def test_time_is_converted_to_utc_and_optional() -> None:
    raw = event()
    raw["time"] = "2026-11-25T12:30:00.250+02:00"
    decoded = decode_usage_event(encode(raw))
    assert decoded.time == datetime(2026, 11, 25, 10, 30, 0, 250_000, tzinfo=UTC)
    assert decoded.time is not None and decoded.time.utcoffset() is not None
    del raw["time"]
    assert decode_usage_event(encode(raw)).time is None
    raw["time"] = None
    assert decode_usage_event(encode(raw)).time is None


def test_extension_attributes_and_extra_data_are_ignored() -> None:
    raw = event(codec="opus")
    raw["datacontenttype"] = "application/json"
    raw["traceparent"] = "00-abc"
    assert isinstance(decode_usage_event(encode(raw)), CallUsage)


def test_accepts_str_and_memoryview() -> None:
    data = encode(event())
    assert decode_usage_event(data.decode()) == decode_usage_event(memoryview(data))


def with_envelope(**changes: Any) -> bytes:
    raw = event()
    for key, value in changes.items():
        if value is DROP:
            del raw[key]
        else:
            raw[key] = value
    return encode(raw)


@pytest.mark.parametrize(
    ("raw", "code", "names"),
    [
        (b"{not json", "invalid_json", "JSON"),
        (b"", "invalid_json", "JSON"),
        (b"\xff\xfe", "invalid_json", "JSON"),
        # Bad UTF-8 is placed where it is, not at the start as the JSON parser says.
        (b'{"specversion": "1.0", "id": "e\xc3("}', "invalid_json",
         "not UTF-8: byte 0xc3 at offset 31"),
        (b"[1, 2]", "invalid_event", "object"),
        (b'"text"', "invalid_event", "object"),
        (with_envelope(specversion="0.3"), "invalid_event", "specversion"),
        (with_envelope(specversion=DROP), "invalid_event", "specversion"),
        (with_envelope(id=DROP), "invalid_event", "id"),
        (with_envelope(id=""), "invalid_event", "id"),
        (with_envelope(id=123), "invalid_event", "id"),
        (with_envelope(source=DROP), "invalid_event", "source"),
        (with_envelope(subject=""), "invalid_event", "subject"),
        (with_envelope(subject=DROP), "invalid_event", "subject"),
        # Stored as the ledger key and the account id: PostgreSQL text has no U+0000
        # and an index entry must fit in a page.
        (with_envelope(id="evt\u00001"), "invalid_event", "id"),
        (with_envelope(source="switch\u0000"), "invalid_event", "source"),
        (with_envelope(subject="\u0000acct"), "invalid_event", "subject"),
        (with_envelope(id="e" * 257), "invalid_event", "id"),
        (with_envelope(source="s" * 257), "invalid_event", "source"),
        (with_envelope(subject="a" * 257), "invalid_event", "subject"),
        # The engine's own credits are keyed (source, key) in the ledger too: a usage
        # event under their source could take a credit's key before it lands.
        (with_envelope(source="topup"), "invalid_event", "source"),
        (with_envelope(source="recharge"), "invalid_event", "source"),
        (with_envelope(source="adjustment"), "invalid_event", "source"),
        # The account-id rule (CONTRACT §8): 1-128 of A-Z a-z 0-9 . _ : -
        (with_envelope(subject="a" * 129), "invalid_event", "subject"),
        (with_envelope(subject="a/b"), "invalid_event", "subject"),
        (with_envelope(subject="acct 42"), "invalid_event", "subject"),
        (with_envelope(subject="acct-42\n"), "invalid_event", "subject"),
        (with_envelope(subject="kundé"), "invalid_event", "subject"),
        (with_envelope(subject=42), "invalid_event", "subject"),
        (with_envelope(type=DROP), "invalid_event", "type"),
        (with_envelope(type=7), "invalid_event", "type"),
        (with_envelope(type="usage.fax"), "unknown_type", "usage.fax"),
        (with_envelope(time="yesterday"), "invalid_event", "time"),
        (with_envelope(time="2026-11-25"), "invalid_event", "time"),
        (with_envelope(time="2026-11-25T10:00:00"), "invalid_event", "time"),  # no offset
        (with_envelope(time="2026-13-25T10:00:00Z"), "invalid_event", "time"),
        (with_envelope(time=1764064800), "invalid_event", "time"),
        (with_envelope(data=DROP), "invalid_event", "data"),
        (with_envelope(data=[1]), "invalid_event", "data"),
        (with_envelope(data="x"), "invalid_event", "data"),
    ],
)
def test_rejects_envelope(raw: bytes, code: str, names: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_usage_event(raw)
    assert caught.value.code == code
    assert names in str(caught.value)


@pytest.mark.parametrize(
    ("type_", "data", "names"),
    [
        ("usage.call", {"call_id": DROP}, "data.call_id"),
        ("usage.call", {"call_id": ""}, "data.call_id"),
        # Stored in the ledger's text columns, which cannot hold U+0000.
        ("usage.call", {"call_id": "c\u0000"}, "data.call_id: must not contain U+0000"),
        ("usage.tollfree", {"call_id": "\u0000"}, "data.call_id: must not contain U+0000"),
        ("usage.sms", {"message_id": "m\u0000"}, "data.message_id: must not contain U+0000"),
        ("usage.stt", {"job_id": "j\u0000"}, "data.job_id: must not contain U+0000"),
        ("usage.call", {"destination": DROP}, "data.destination"),
        ("usage.call", {"destination": "442071234567"}, "data.destination"),
        ("usage.call", {"destination": "+44 20 7123 4567"}, "data.destination"),
        ("usage.call", {"destination": "+1"}, "data.destination"),
        ("usage.call", {"destination": "+1234567890123456"}, "data.destination"),
        ("usage.call", {"destination": "+0441234"}, "data.destination"),
        ("usage.call", {"destination": "+44abc"}, "data.destination"),
        ("usage.call", {"destination": "+\uff14\uff14\uff12\uff10"}, "data.destination"),
        ("usage.call", {"from_s": 1.5}, "data.from_s"),
        ("usage.call", {"to_s": 60.0}, "data.to_s: must be an integer, got float 60.0"),
        ("usage.call", {"from_s": 0.0}, "data.from_s"),
        ("usage.call", {"from_s": True}, "data.from_s"),
        ("usage.call", {"from_s": "0"}, "data.from_s"),
        ("usage.call", {"from_s": DROP}, "data.from_s"),
        ("usage.call", {"to_s": 60.0}, "data.to_s"),
        ("usage.call", {"from_s": -1}, "from_s"),
        ("usage.call", {"from_s": 60, "to_s": 60}, "from_s"),
        ("usage.call", {"from_s": 61, "to_s": 60}, "from_s"),
        ("usage.call", {"final": "yes"}, "data.final"),
        ("usage.call", {"final": 1}, "data.final"),
        ("usage.tollfree", {"direction": "sideways"}, "data.direction"),
        ("usage.tollfree", {"direction": DROP}, "data.direction"),
        ("usage.tollfree", {"tollfree_number": "0800"}, "data.tollfree_number"),
        ("usage.tollfree", {"to_s": 0}, "from_s"),
        ("usage.sms", {"segments": 0}, "data.segments"),
        ("usage.sms", {"segments": 1.0}, "data.segments"),
        ("usage.sms", {"segments": DROP}, "data.segments"),
        ("usage.sms", {"segments": DROP, "text": 42}, "data.text"),
        ("usage.sms", {"message_id": DROP}, "data.message_id"),
        ("usage.sms", {"destination": "+33 6"}, "data.destination"),
        ("usage.stt", {"seconds": 0}, "data.seconds"),
        ("usage.stt", {"seconds": -3}, "data.seconds"),
        ("usage.stt", {"seconds": 1.5}, "data.seconds"),
        ("usage.stt", {"seconds": False}, "data.seconds"),
        ("usage.stt", {"job_id": DROP}, "data.job_id"),
    ],
)
def test_rejects_data(type_: str, data: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_usage_event(encode(event(type_, **data)))
    assert caught.value.code == "invalid_event"
    assert names in str(caught.value)


@pytest.mark.parametrize(("type_", "key", "names"), [
    ("usage.call", "to_s", "data.to_s: must be an integer, got a number too large"),
    ("usage.sms", "segments", "data.segments: must be an integer >= 1, got a number too large"),
])
def test_an_integer_past_64_bits_is_called_too_large_not_a_float(
        type_: str, key: str, names: str) -> None:
    raw = encode(event(type_, **{key: 7})).replace(f'"{key}":7'.encode(),
                                                    f'"{key}":{10**30}'.encode())
    assert str(10**30).encode() in raw  # the switch sent an integer literal
    with pytest.raises(InvalidEvent, match=names):
        decode_usage_event(raw)


def test_keys_of_the_longest_accepted_length_decode() -> None:
    subject = "Az09._:-" * 16  # every character of the account-id rule, 128 of them
    decoded = decode_usage_event(with_envelope(id="e" * 256, source="ü" * 256,
                                               subject=subject))
    assert (len(decoded.event_id), len(decoded.source)) == (256, 256)
    assert decoded.account_id == subject


def test_errors_chain_their_cause() -> None:
    with pytest.raises(InvalidEvent) as bad_json:
        decode_usage_event(b"{")
    assert isinstance(bad_json.value.__cause__, orjson.JSONDecodeError)
    with pytest.raises(InvalidEvent) as bad_time:
        decode_usage_event(with_envelope(time="2026-02-30T10:00:00Z"))
    assert isinstance(bad_time.value.__cause__, ValueError)


def test_events_are_frozen() -> None:
    decoded = decode_usage_event(encode(event()))
    assert isinstance(decoded, CallUsage)
    with pytest.raises(AttributeError):
        decoded.to_s = 1  # type: ignore[misc]


def test_the_refused_sources_are_those_of_every_credit_the_stores_write() -> None:
    from typing import get_args

    from rating.core.identifiers import CREDIT_SOURCES
    from rating.stores.accounts import CreditKind

    assert CREDIT_SOURCES == frozenset(get_args(CreditKind))

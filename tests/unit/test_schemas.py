"""The JSON Schemas and the decoder agree on sample events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from rating.core.errors import InvalidEvent
from rating.core.events import decode_usage_event

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
USAGE = ["usage.call", "usage.tollfree", "usage.sms", "usage.stt"]


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return schema


REGISTRY: Registry[Any] = Registry().with_resources(
    (load(name)["$id"], Resource.from_contents(load(name)))
    for name in [*USAGE, "usage.event", "balance.event"]
)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load(name), registry=REGISTRY)


@pytest.mark.parametrize("name", [*USAGE, "usage.event", "balance.event"])
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    Draft202012Validator.check_schema(load(name))


def envelope(type_: str, data: object, **extra: object) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "switch-eu-1",
        "type": type_,
        "time": "2026-11-25T10:00:00Z",
        "subject": "acct-42",
        "data": data,
        **extra,
    }


CALL = {"call_id": "c", "destination": "+442071234567", "from_s": 0, "to_s": 60}
TOLLFREE = {**CALL, "tollfree_number": "+18005550100", "direction": "inbound"}
SMS = {"message_id": "m", "destination": "+33612345678", "segments": 1}
STT = {"job_id": "j", "seconds": 30}

VALID = [
    envelope("usage.call", CALL),
    envelope("usage.call", {**CALL, "final": True}),
    envelope("usage.tollfree", TOLLFREE),
    envelope("usage.sms", SMS),
    envelope("usage.sms", {"message_id": "m", "destination": "+33612345678", "text": "hi"}),
    envelope("usage.stt", STT),
    envelope("usage.stt", STT, time=None),
    {k: v for k, v in envelope("usage.stt", STT).items() if k != "time"},
    envelope("usage.call", CALL, time="2026-11-25T12:00:00.5+02:00"),
]
INVALID = [
    envelope("usage.fax", CALL),
    envelope("usage.call", CALL, specversion="0.3"),
    envelope("usage.call", CALL, id=""),
    envelope("usage.call", CALL, subject=None),
    envelope("usage.call", CALL, time="yesterday"),
    envelope("usage.call", CALL, time="2026-11-25T10:00:00"),
    envelope("usage.call", [CALL]),
    envelope("usage.call", {**CALL, "destination": "442071234567"}),
    envelope("usage.call", {**CALL, "destination": "+0123"}),
    envelope("usage.call", {**CALL, "from_s": -1}),
    envelope("usage.call", {**CALL, "from_s": 1.5}),
    envelope("usage.call", {**CALL, "to_s": True}),
    envelope("usage.call", {**CALL, "final": "yes"}),
    envelope("usage.call", {k: v for k, v in CALL.items() if k != "call_id"}),
    envelope("usage.tollfree", {**TOLLFREE, "direction": "up"}),
    envelope("usage.sms", {**SMS, "segments": 0}),
    envelope("usage.sms", {"message_id": "m", "destination": "+33612345678"}),
    envelope("usage.stt", {**STT, "seconds": 0}),
    envelope("usage.stt", {"job_id": "j"}),
]


def decoder_accepts(event: dict[str, Any]) -> bool:
    try:
        decode_usage_event(orjson.dumps(event))
    except InvalidEvent:
        return False
    return True


@pytest.mark.parametrize("event", VALID)
def test_valid_events_pass_both(event: dict[str, Any]) -> None:
    assert validator("usage.event").is_valid(event)
    assert validator(f"usage.{event['type'].split('.')[1]}").is_valid(event)
    assert decoder_accepts(event)


@pytest.mark.parametrize("event", INVALID)
def test_invalid_events_fail_both(event: dict[str, Any]) -> None:
    assert not validator("usage.event").is_valid(event)
    assert not decoder_accepts(event)


BALANCE = {
    "specversion": "1.0",
    "id": "bal-1",
    "source": "rating-engine",
    "type": "balance.low",
    "subject": "acct-42",
    "time": "2026-11-25T10:00:00Z",
    "data": {
        "account_id": "acct-42",
        "balance": "4.990000",
        "threshold": "5.000000",
        "currency": "EUR",
    },
}


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({}, True),
        ({"threshold": None}, True),
        ({"balance": "-0.010000"}, True),
        ({"balance": "4.99"}, False),
        ({"balance": 4.99}, False),
        ({"threshold": "5"}, False),
        ({"currency": "eur"}, False),
        ({"account_id": ""}, False),
    ],
)
def test_balance_event_data(change: dict[str, object], valid: bool) -> None:
    event = {**BALANCE, "data": {**BALANCE["data"], **change}}  # type: ignore[dict-item]
    assert validator("balance.event").is_valid(event) is valid


@pytest.mark.parametrize(
    "type_",
    [
        "balance.low",
        "balance.exhausted",
        "balance.recovered",
        "recharge.requested",
        "recharge.succeeded",
        "recharge.failed",
        "topup.credited",
    ],
)
def test_balance_event_types(type_: str) -> None:
    event: dict[str, object] = {**BALANCE, "type": type_}
    if type_.startswith("recharge."):  # CONTRACT §12: every recharge.* event carries these
        event["data"] = {**BALANCE["data"], "attempt": 1,  # type: ignore[dict-item]
                         "amount": "20.000000"}
    assert validator("balance.event").is_valid(event)
    assert not validator("balance.event").is_valid({**BALANCE, "type": "balance.unknown"})

"""Usage events (contract §3): bytes are decoded and validated here, once.

Past ``decode_usage_event`` nothing touches ``dict[str, Any]``: the rest of the
engine sees only the frozen dataclasses below or an ``InvalidEvent``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar, Literal

import orjson

from rating.core.errors import InvalidEvent
from rating.core.identifiers import ACCOUNT_ID_RULE, CREDIT_SOURCES, MAX_KEY_LENGTH, is_account_id
from rating.core.rfc3339 import parse_rfc3339
from rating.core.segments import count_segments

Service = Literal["call", "tollfree", "sms", "stt"]
Direction = Literal["inbound", "outbound"]

_E164_RE = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)
_is_e164 = _E164_RE.fullmatch


@dataclass(frozen=True, slots=True)
class CallUsage:
    """Elapsed seconds ``from_s..to_s`` of an outgoing call to ``destination``."""

    service: ClassVar[Literal["call"]] = "call"
    event_id: str
    source: str
    account_id: str
    time: datetime | None
    call_id: str
    destination: str
    from_s: int
    to_s: int
    final: bool = False
    # When the call started (optional): the whole call is priced by the version then.
    started_at: datetime | None = None


# A frozen dataclass's __init__ pays a generic object.__setattr__ per field;
# calls are most of the traffic, so their decoder fills the slots through the
# descriptors directly (the object is the same, and as frozen, afterwards).
_new = object.__new__
_CALL_SETTERS = tuple(CallUsage.__dict__[field.name].__set__ for field in fields(CallUsage))


def _new_call(
    event_id: str,
    source: str,
    account_id: str,
    time: datetime | None,
    call_id: str,
    destination: str,
    from_s: int,
    to_s: int,
    final: bool,
    started_at: datetime | None,
) -> CallUsage:
    event = _new(CallUsage)
    (s_id, s_source, s_account, s_time, s_call, s_dest, s_from, s_to, s_final,
     s_started) = _CALL_SETTERS
    s_id(event, event_id)
    s_source(event, source)
    s_account(event, account_id)
    s_time(event, time)
    s_call(event, call_id)
    s_dest(event, destination)
    s_from(event, from_s)
    s_to(event, to_s)
    s_final(event, final)
    s_started(event, started_at)
    return event


@dataclass(frozen=True, slots=True)
class TollFreeUsage:
    """Elapsed seconds ``from_s..to_s`` of a call on the account's toll-free number."""

    service: ClassVar[Literal["tollfree"]] = "tollfree"
    event_id: str
    source: str
    account_id: str
    time: datetime | None
    call_id: str
    tollfree_number: str
    direction: Direction
    from_s: int
    to_s: int
    final: bool = False
    started_at: datetime | None = None  # as for calls


@dataclass(frozen=True, slots=True)
class SmsUsage:
    """One SMS of ``segments`` segments sent to ``destination``."""

    service: ClassVar[Literal["sms"]] = "sms"
    event_id: str
    source: str
    account_id: str
    time: datetime | None
    message_id: str
    destination: str
    segments: int


@dataclass(frozen=True, slots=True)
class SttUsage:
    """``seconds`` of speech-to-text processing."""

    service: ClassVar[Literal["stt"]] = "stt"
    event_id: str
    source: str
    account_id: str
    time: datetime | None
    job_id: str
    seconds: int


UsageEvent = CallUsage | TollFreeUsage | SmsUsage | SttUsage


def _invalid(message: str) -> InvalidEvent:
    return InvalidEvent(message, code="invalid_event")


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if type(value) is not str or not value:
        if value is None:
            raise _invalid(f"{where}{key}: required non-empty string is missing")
        raise _invalid(f"{where}{key}: must be a non-empty string")
    if "\x00" in value:  # PostgreSQL text cannot hold it: refused here, not by the debit
        raise _invalid(f"{where}{key}: must not contain U+0000")
    return value


# (source, id) is the ledger's unique key (rating.core.identifiers): a key it cannot
# hold is refused here (to the DLQ) rather than failing the batch's transaction every
# time. ``subject`` is an account id and must follow the account-id rule (CONTRACT §8),
# which the accounts table enforces too.
# Subjects seen to be valid: most events name an account seen a moment ago, and a set
# lookup costs a small fraction of the pattern match. Cleared when full.
_VALID_SUBJECTS: set[str] = set()
_VALID_SUBJECTS_MAX = 100_000


def _check_keys(event_id: str, source: str, subject: str) -> None:
    for key, value in (("id", event_id), ("source", source)):
        if len(value) > MAX_KEY_LENGTH:
            raise _invalid(f"{key}: longer than {MAX_KEY_LENGTH} characters")
        if "\x00" in value:
            raise _invalid(f"{key}: must not contain U+0000")
    if source in CREDIT_SOURCES:
        raise _invalid(f"source: {source!r} names the engine's own credits (top-ups,"
                       " recharges, adjustments), not a voice switch")
    if not is_account_id(subject):
        raise _invalid(f"subject: not an account id ({ACCOUNT_ID_RULE}): {subject[:140]!r}")
    if len(_VALID_SUBJECTS) >= _VALID_SUBJECTS_MAX:
        _VALID_SUBJECTS.clear()
    _VALID_SUBJECTS.add(subject)


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    # bool is an int subclass and JSON 1.0 decodes to float: both are rejected.
    if type(value) is not int:
        if value is None:
            raise _invalid(f"data.{key}: required integer is missing")
        raise _invalid(f"data.{key}: must be an integer, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    """What a JSON value that should have been an integer was, as its sender wrote it."""
    if type(value) is float and value.is_integer() and abs(value) >= 2**63:
        # JSON decodes an integer past 64 bits as a float: say so, not "float".
        return f"a number too large for an integer ({value:g})"
    return f"{type(value).__name__} {value!r}"[:140]


def _e164(data: dict[str, Any], key: str) -> str:
    value = _text(data, key, "data.")
    if not _is_e164(value):
        raise _invalid(f"data.{key}: not an E.164 number ('+' and 2 to 15 digits): {value!r}")
    return value


def _final(data: dict[str, Any]) -> bool:
    value = data.get("final", False)
    if type(value) is not bool:
        raise _invalid("data.final: must be a boolean")
    return value


def _started_at(data: dict[str, Any], when: datetime | None) -> datetime | None:
    """``data.started_at``: optional; an RFC 3339 time not after the event's ``time``."""
    value = data.get("started_at")
    if value is None:
        return None
    if type(value) is not str:
        raise _invalid("data.started_at: must be an RFC 3339 string")
    try:
        started = parse_rfc3339(value)
    except ValueError as exc:
        # parse_rfc3339 names the field "time"; this one is data.started_at.
        raise _invalid("data.started_at" + str(exc).removeprefix("time")) from exc
    if when is not None and started > when:
        raise _invalid("data.started_at: after the event's time")
    return started


def _interval(data: dict[str, Any]) -> tuple[int, int]:
    from_s, to_s = _int(data, "from_s"), _int(data, "to_s")
    if not 0 <= from_s < to_s:
        raise _invalid(f"data.from_s/to_s: need 0 <= from_s < to_s, got {from_s}..{to_s}")
    return from_s, to_s


def _time(value: object) -> datetime:
    if type(value) is not str:
        raise _invalid("time: must be an RFC 3339 string")
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise _invalid(str(exc)) from exc


# Each decoder checks the valid case in one expression (the hot path) and only
# on failure walks the fields again to name the first problem.


def _call(
    event_id: str, source: str, subject: str, when: datetime | None, data: dict[str, Any]
) -> CallUsage:
    call_id, destination = data.get("call_id"), data.get("destination")
    from_s, to_s, final = data.get("from_s"), data.get("to_s"), data.get("final", False)
    if (
        type(call_id) is str
        and call_id
        and "\x00" not in call_id
        and type(destination) is str
        and _is_e164(destination)
        and type(from_s) is int
        and type(to_s) is int
        and 0 <= from_s < to_s
        and type(final) is bool
    ):
        started = None if "started_at" not in data else _started_at(data, when)
        return _new_call(event_id, source, subject, when, call_id, destination, from_s, to_s,
                         final, started)
    _text(data, "call_id", "data.")
    _e164(data, "destination")
    _interval(data)
    _final(data)
    raise AssertionError("unreachable: a field check must have failed")


def _tollfree(
    event_id: str, source: str, subject: str, when: datetime | None, data: dict[str, Any]
) -> TollFreeUsage:
    call_id, number = data.get("call_id"), data.get("tollfree_number")
    direction = data.get("direction")
    from_s, to_s, final = data.get("from_s"), data.get("to_s"), data.get("final", False)
    if direction != "inbound" and direction != "outbound":
        raise _invalid("data.direction: must be 'inbound' or 'outbound'")
    if (
        type(call_id) is str
        and call_id
        and "\x00" not in call_id
        and type(number) is str
        and _is_e164(number)
        and type(from_s) is int
        and type(to_s) is int
        and 0 <= from_s < to_s
        and type(final) is bool
    ):
        return TollFreeUsage(
            event_id, source, subject, when, call_id, number, direction, from_s, to_s, final,
            _started_at(data, when),
        )
    _text(data, "call_id", "data.")
    _e164(data, "tollfree_number")
    _interval(data)
    _final(data)
    raise AssertionError("unreachable: a field check must have failed")


def _sms(
    event_id: str, source: str, subject: str, when: datetime | None, data: dict[str, Any]
) -> SmsUsage:
    message_id, destination = data.get("message_id"), data.get("destination")
    segments = data.get("segments")
    if type(message_id) is not str or not message_id or "\x00" in message_id:
        message_id = _text(data, "message_id", "data.")
    if type(destination) is not str or not _is_e164(destination):
        destination = _e164(data, "destination")
    if segments is None:
        text = data.get("text")
        if type(text) is not str:
            if text is None:
                raise _invalid("data.segments: required integer is missing (or give data.text)")
            raise _invalid("data.text: must be a string")
        segments = count_segments(text)
    elif type(segments) is not int or segments < 1:
        raise _invalid(
            f"data.segments: must be an integer >= 1, got {_kind(segments)}"
        )
    return SmsUsage(event_id, source, subject, when, message_id, destination, segments)


def _stt(
    event_id: str, source: str, subject: str, when: datetime | None, data: dict[str, Any]
) -> SttUsage:
    job_id, seconds = data.get("job_id"), data.get("seconds")
    if type(job_id) is not str or not job_id or "\x00" in job_id:
        job_id = _text(data, "job_id", "data.")
    if type(seconds) is not int or seconds < 1:
        raise _invalid(
            f"data.seconds: must be an integer > 0, got {_kind(seconds)}"
        )
    return SttUsage(event_id, source, subject, when, job_id, seconds)


_Decoder = Callable[[str, str, str, datetime | None, dict[str, Any]], UsageEvent]
_DECODERS: dict[str, _Decoder] = {
    "usage.call": _call,
    "usage.tollfree": _tollfree,
    "usage.sms": _sms,
    "usage.stt": _stt,
}
EVENT_TYPES: frozenset[str] = frozenset(_DECODERS)


def _json_problem(raw: bytes | bytearray | memoryview | str, exc: Exception) -> str:
    """orjson's reason, except for bad UTF-8, which it places at the start: the byte."""
    if not isinstance(raw, str):
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"not UTF-8: byte 0x{bad.object[bad.start]:02x} at offset {bad.start}"
    return str(exc)


def decode_usage_event(raw: bytes | bytearray | memoryview | str) -> UsageEvent:
    """Decode one CloudEvents 1.0 structured-JSON usage event, or raise ``InvalidEvent``.

    Codes: ``invalid_json`` (not JSON), ``unknown_type`` (a ``type`` this engine
    does not rate) and ``invalid_event`` (any other violation, naming the field).
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {_json_problem(raw, exc)}",
                           code="invalid_json") from exc
    if type(obj) is not dict:
        raise _invalid("event must be a JSON object")
    if obj.get("specversion") != "1.0":
        raise _invalid('specversion: must be "1.0"')
    event_id, source, subject = obj.get("id"), obj.get("source"), obj.get("subject")
    if not (
        type(event_id) is str
        and event_id
        and type(source) is str
        and source
        and type(subject) is str
        and subject
    ):
        event_id, source, subject = (_text(obj, key, "") for key in ("id", "source", "subject"))
    if (len(event_id) > MAX_KEY_LENGTH or len(source) > MAX_KEY_LENGTH
            or "\x00" in event_id or "\x00" in source or subject not in _VALID_SUBJECTS
            or source in CREDIT_SOURCES):
        _check_keys(event_id, source, subject)
    event_type = obj.get("type")
    decoder = _DECODERS.get(event_type) if type(event_type) is str else None
    if decoder is None:
        if type(event_type) is not str or not event_type:
            _text(obj, "type", "")
        raise InvalidEvent(f"type: unknown event type {event_type!r}", code="unknown_type")
    data = obj.get("data")
    if type(data) is not dict:
        raise _invalid("data: must be a JSON object")
    when = obj.get("time")
    if when is not None:
        when = _time(when)
    return decoder(event_id, source, subject, when, data)

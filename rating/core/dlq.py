"""A record of the dead-letter topic, read back: why an event was refused, and where.

The usage consumer writes the original bytes and key with headers ``error``,
``error_code`` and ``source_*`` (CONTRACT §2). Reading one back never fails: bytes
that are not a JSON object simply have no id, source or subject.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson


def _text(obj: object, key: str) -> str | None:
    if isinstance(obj, dict):
        value = obj.get(key)
        if isinstance(value, str) and _is_unicode(value):
            return value
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")  # a lone surrogate (``"\ud800"``) is not
    except UnicodeEncodeError:
        return False
    return True


def _lenient(value: bytes) -> object:
    """What Python's own JSON reader makes of bytes orjson refused: it takes lone
    surrogates in strings, and bad UTF-8 elsewhere in the event is replaced, so that a
    record refused for its text (say) still shows the id it was sent with."""
    try:
        return json.loads(value.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None


def _names(value: bytes | None) -> tuple[str | None, str | None, str | None]:
    """The id, source and subject of the event ``value`` holds, where it has them."""
    try:
        obj = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        obj = _lenient(value) if value else None
    return _text(obj, "id"), _text(obj, "source"), _text(obj, "subject")


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One dead-letter record; ``value`` and ``key`` are the original bytes, unchanged."""

    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    event_id: str | None
    source: str | None
    subject: str | None

    @classmethod
    def of(cls, partition: int, offset: int, timestamp_ms: int | None, key: bytes | None,
           value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> DlqRecord:
        decoded = {name: (raw or b"").decode("utf-8", "replace") for name, raw in headers}
        return cls(partition, offset, timestamp_ms, key, value, decoded, *_names(value))

    def with_bytes(self, key: bytes | None, value: bytes | None) -> DlqRecord:
        """This record with other key and value bytes (the originals of one published cut)."""
        event_id, source, subject = _names(value)
        return replace(self, key=key, value=value, event_id=event_id, source=source,
                       subject=subject)

    @property
    def error_code(self) -> str | None:
        return self.headers.get("error_code")

    @property
    def error(self) -> str | None:
        return self.headers.get("error")

    @property
    def time(self) -> str | None:
        """When the record was written to the DLQ (RFC 3339, UTC)."""
        if self.timestamp_ms is None or self.timestamp_ms < 0:
            return None
        when = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def listing(self) -> dict[str, object]:
        """The line ``dlq list`` prints for it (CONTRACT §13, plus partition and time)."""
        return {"id": self.event_id, "source": self.source, "subject": self.subject,
                "error_code": self.error_code, "error": self.error, "offset": self.offset,
                "partition": self.partition, "time": self.time}

    def refused(self) -> dict[str, object]:
        """What ``events show`` answers for an event found here (CONTRACT §13)."""
        return {"status": "refused", "error_code": self.error_code, "error": self.error,
                "offset": self.offset, "partition": self.partition, "time": self.time,
                "account_id": self.subject}


__all__ = ["DlqRecord"]

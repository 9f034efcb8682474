"""The pure parts of explaining: a DLQ record read back, months, --since, the request id."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.http_metrics import _VALID_ID
from commands.events import since_arg
from rating.core.dlq import DlqRecord
from rating.core.errors import CommandError, InvalidRequest
from rating.stores.explain import check_event_key
from rating.stores.statements import month_bounds


def test_a_dlq_record_is_read_back_whatever_its_bytes() -> None:
    headers = [("error", b"no call rate for +882"), ("error_code", b"no_rate"),
               ("source_offset", b"17"), ("odd", None)]
    record = DlqRecord.of(0, 5, 1_764_064_800_123, b"acct-1",
                          b'{"id": "e1", "source": "sw", "subject": "acct-1"}', headers)
    assert record.listing() == {
        "id": "e1", "source": "sw", "subject": "acct-1", "error_code": "no_rate",
        "error": "no call rate for +882", "offset": 5, "partition": 0,
        "time": "2025-11-25T10:00:00.123Z"}
    assert record.refused()["status"] == "refused"
    for value in (None, b"", b"not json", b"[1, 2]", b'{"id": 7}', b"\xff\xfe"):
        odd = DlqRecord.of(1, 6, None, None, value, [])
        assert (odd.event_id, odd.source, odd.subject, odd.error_code, odd.time) == (
            None, None, None, None, None)


def test_months_and_since() -> None:
    assert month_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC),
                                       datetime(2027, 1, 1, tzinfo=UTC))
    for bad in ("2026-13", "2026-00", "0000-01", "2026-1", "26-11", "2026-11-01", "", "9999-12"):
        with pytest.raises(InvalidRequest):
            month_bounds(bad)
    assert since_arg("2026-11-25") == datetime(2026, 11, 25, tzinfo=UTC)
    assert since_arg("2026-11-25T10:00:00+01:00") == datetime(2026, 11, 25, 9, tzinfo=UTC)
    assert since_arg(None) is None
    with pytest.raises(CommandError):
        since_arg("last tuesday")


def test_event_keys_and_request_ids() -> None:
    check_event_key("switch-eu-1", "evt-1")
    for source, event_id in (("", "e"), ("s", ""), ("s", "x\x00"), ("s" * 257, "e"),
                             ("s", "\udc80")):
        with pytest.raises(InvalidRequest):
            check_event_key(source, event_id)
    assert _VALID_ID.fullmatch("trace-42")
    for bad in ("", "has space", "x" * 129, "caf\u00e9", "line\nbreak"):
        assert not _VALID_ID.fullmatch(bad)


def test_a_record_refused_as_invalid_json_still_names_the_event_it_was_sent_as() -> None:
    # An analyst asks `events show SOURCE ID` with what the switch sent: a lone surrogate
    # or bad UTF-8 in the text must not hide the id, source and subject around it.
    for text in (rb'"\ud800abc"', b'"\xff\xfe"'):
        value = b'{"id": "b21", "source": "sw", "subject": "acct-1", "data": {"text": ' + (
            text + b"}}")
        record = DlqRecord.of(0, 1, None, None, value, [("error_code", b"invalid_json")])
        assert (record.event_id, record.source, record.subject) == ("b21", "sw", "acct-1")
    # An id that is itself a lone surrogate names nothing (it could not be printed).
    record = DlqRecord.of(0, 2, None, None, rb'{"id": "\udc00", "source": "sw"}', [])
    assert (record.event_id, record.source) == (None, "sw")
    deep = DlqRecord.of(0, 3, None, None, b"[" * 100_000 + b"]" * 100_000, [])
    assert deep.event_id is None

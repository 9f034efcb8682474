"""``rating-engine tariffs validate`` and ``rating-engine rate``: the pure core on the CLI.

``rate`` decodes and prices with the very functions the usage consumer uses, so
the billing team can check a tariff change against real events before it ships.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO, TextIO

import orjson

from rating.core.detail import detail_json
from rating.core.errors import RatingError, TariffError
from rating.core.events import UsageEvent, decode_usage_event
from rating.core.money import format_amount
from rating.core.rate import rate
from rating.core.tariff import TariffBook
from rating.tariffbook.files import load_tariffs


def describe(book: TariffBook) -> str:
    """One-line summary of a loaded book, e.g. ``2 plans, 3 versions, 264 call rates``."""
    versions = [version for plan_id in book.plan_ids() for version in book.versions(plan_id)]
    call_rates = sum(len(version.call) for version in versions if version.call is not None)
    return f"{len(book)} plans, {len(versions)} versions, {call_rates} call rates"


def validate_command(root: Path, out: TextIO) -> int:
    """Print ``file:line: reason`` per issue and return 1, or a summary and 0."""
    try:
        book = load_tariffs(root)
    except TariffError as exc:
        for issue in exc.issues:
            out.write(f"{issue}\n")
        return 1
    out.write(f"ok: {describe(book)}\n")
    return 0


def _event_id(line: bytes) -> str | None:
    """Best-effort id of an event that failed, so its error line can be matched."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        event_id = obj.get("id")
        if isinstance(event_id, str):
            return event_id
    return None


# Beside the contract's fields (§7), what priced the charge: its rated detail's billed
# quantity, rate, connect fee, increment, matched prefix and plan version.
_EXPLAINED = ("billed_seconds", "segments", "rate", "connect_fee", "increment", "prefix")


def rate_answer(line: bytes, book: TariffBook, plan_id: str) -> tuple[dict[str, object], bool]:
    """The JSON answer for one input line, and whether it priced the event (never raises)."""
    event: UsageEvent | None = None
    try:
        event = decode_usage_event(line)
        charge = rate(event, book, plan_id)
    except RatingError as exc:
        event_id = event.event_id if event is not None else _event_id(line)
        return {"id": event_id, "error_code": exc.code, "error": str(exc)}, False
    answer: dict[str, object] = {
        "id": charge.event_id,
        "service": charge.service,
        "country": charge.country,
        "amount": format_amount(charge.amount),
        "currency": charge.currency,
        "plan": charge.plan_id,
    }
    detail: dict[str, object] = {}
    if charge.detail is not None:
        detail = detail_json(charge.service, charge.country, charge.detail)
    answer.update((key, detail[key]) for key in _EXPLAINED if key in detail)
    answer["plan_version"] = detail.get("effective_from")
    return answer, True


def rate_line(line: bytes, book: TariffBook, plan_id: str) -> bytes:
    """The JSON answer for one input line: a charge or an error, never an exception."""
    return orjson.dumps(rate_answer(line, book, plan_id)[0])


def rate_command(
    root: Path,
    plan_id: str,
    inp: BinaryIO | TextIO,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Rate JSON-lines usage events from ``inp``: one JSON line out per event line.

    Returns 0 when at least one event was priced (bad events are answered with error
    lines), 1 when every line failed, or when the tariffs themselves do not load,
    listing their issues on ``err`` (stderr by default).
    """
    try:
        book = load_tariffs(root)
    except TariffError as exc:
        errors = sys.stderr if err is None else err
        for issue in exc.issues:
            errors.write(f"{issue}\n")
        return 1
    # Read bytes so that invalid UTF-8 becomes an invalid_json line, not a crash.
    source = getattr(inp, "buffer", inp)
    interactive = inp.isatty()
    lines = priced = 0
    for raw in source:
        line = raw.encode() if isinstance(raw, str) else raw
        if not line.strip():
            continue
        answer, ok = rate_answer(line, book, plan_id)
        lines += 1
        priced += ok
        out.write(orjson.dumps(answer).decode())
        out.write("\n")
        if interactive:
            out.flush()
    out.flush()
    return 1 if lines and not priced else 0

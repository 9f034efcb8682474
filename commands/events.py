"""``events show``, ``dlq list``, ``dlq replay`` and ``publish`` (CONTRACT §11, §13).

Where an event went (the ledger, then the DLQ), what the DLQ holds, refused events
brought back once cured, and usage events published by hand as a switch would.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TextIO

import orjson
from aiokafka.errors import KafkaError

from commands.accounts import store_for
from consumers.dlq_reader import find_in_dlq, scan_dlq
from consumers.dlq_replay import (
    DEFAULT_REPLAY_CODES,
    REPLAY_MAX_RECORD_BYTES,
    replay_dlq,
    wait_for_tariffs,
)
from engine.services import existing_kafka_bootstrap, kafka_producer
from rating.core.errors import BrokerUnavailable, CommandError, PermanentError, TariffError
from rating.core.events import decode_usage_event
from rating.settings import Settings
from rating.stores.explain import applied_event, check_event_key
from rating.tariffbook.book import files_digest, fingerprint
from rating.tariffbook.files import load_tariffs


def since_arg(text: str | None) -> datetime | None:
    """``--since``: an ISO-8601 date or time; without an offset it is UTC."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"--since: expected an ISO-8601 time such as 2026-11-25T10:00:00Z,"
                           f" got {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def kafka_for(settings: Settings) -> str:
    bootstrap = await existing_kafka_bootstrap(settings)
    if bootstrap is None:
        raise CommandError(
            "no Kafka to read: RATING_KAFKA_BOOTSTRAP is not set and no engine runs an "
            f"embedded broker under {settings.data_dir} (start one: rating-engine dev)")
    return bootstrap


def _line(out: TextIO, value: object) -> None:
    out.write(orjson.dumps(value).decode() + "\n")


async def cmd_events_show(settings: Settings, out: TextIO, source: str, event_id: str) -> int:
    """One JSON object: applied (from the ledger), refused (from the DLQ) or not_found."""
    check_event_key(source, event_id)
    async with store_for(settings) as store:
        async with store.pool.acquire() as conn:
            answer = await applied_event(conn, source, event_id)
        if answer is None:
            record = await find_in_dlq(await kafka_for(settings), settings.dlq_topic, source,
                                       event_id, store.pool)
            answer = record.refused() if record is not None else {"status": "not_found"}
    out.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def cmd_dlq_list(settings: Settings, out: TextIO, codes: Sequence[str] | None,
                       since: str | None) -> int:
    """One JSON line per DLQ record (of the codes given, written since the time given)."""
    wanted = frozenset(codes) if codes else None
    when = since_arg(since)
    bootstrap = await kafka_for(settings)
    async with store_for(settings) as store:  # records cut in the topic come whole
        async for record in scan_dlq(bootstrap, settings.dlq_topic, since=when,
                                     pool=store.pool):
            if wanted is None or record.error_code in wanted:
                _line(out, record.listing())
    out.flush()
    return 0


async def cmd_dlq_replay(settings: Settings, out: TextIO, codes: Sequence[str] | None,
                         since: str | None, dry_run: bool) -> int:
    """Republish the refused events that now rate; one JSON line of counts."""
    when = since_arg(since)
    files = files_digest(settings.tariffs_dir, fingerprint(settings.tariffs_dir))
    try:
        book = load_tariffs(settings.tariffs_dir)
    except TariffError as exc:
        raise CommandError(f"tariffs do not load, nothing replayed:\n{exc}") from None
    bootstrap = await kafka_for(settings)
    async with store_for(settings) as store:
        if not dry_run:  # what a fix cures is sent once the engines price with it
            await wait_for_tariffs(store.pool, files, float(settings.tariff_poll_seconds),
                                   lambda line: print(line, file=sys.stderr, flush=True))
        if dry_run:
            counts = await replay_dlq(bootstrap=bootstrap, dlq_topic=settings.dlq_topic,
                                      usage_topic=settings.usage_topic, pool=store.pool,
                                      book=book, producer=None,
                                      codes=codes or DEFAULT_REPLAY_CODES, since=when)
        else:
            async with kafka_producer(bootstrap,
                                      max_request_size=REPLAY_MAX_RECORD_BYTES) as producer:
                counts = await replay_dlq(bootstrap=bootstrap, dlq_topic=settings.dlq_topic,
                                          usage_topic=settings.usage_topic, pool=store.pool,
                                          book=book, producer=producer,
                                          codes=codes or DEFAULT_REPLAY_CODES, since=when)
    _line(out, counts.summary())
    return 0


async def cmd_publish(settings: Settings, out: TextIO, err: TextIO, path: Path | None,
                      inp: BinaryIO | None = None) -> int:
    """Publish usage events (JSON lines) to usage.events keyed by subject.

    One JSON line out per event published; a bad line is one ``FILE:LINE: reason``
    line on ``err`` and the others are still published. Exit 1 if any failed.
    """
    name = str(path) if path is not None else "stdin"
    if path is not None:
        try:
            raw_lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror}") from None
    else:
        raw_lines = (inp or sys.stdin.buffer).read().splitlines()
    events: list[_Publishable] = []
    failed = 0
    for number, raw in enumerate(raw_lines, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            event = decode_usage_event(line)
        except PermanentError as exc:
            err.write(f"{name}:{number}: {exc.code}: {exc.message}\n")
            failed += 1
            continue
        events.append(_Publishable(number, line, event.event_id, event.source,
                                   event.account_id))
    if events:
        failed += await _send(settings, out, err, name, events)
    total = failed + len(events)
    err.write(f"published {total - failed} of {total} events to {settings.usage_topic}\n")
    return 1 if failed else 0


class _Publishable(NamedTuple):
    number: int  # line number in the input
    value: bytes
    event_id: str
    source: str
    subject: str


async def _send(settings: Settings, out: TextIO, err: TextIO, name: str,
                events: list[_Publishable]) -> int:
    failed = 0
    async with kafka_producer(await kafka_for(settings)) as producer:
        try:
            futures = [await producer.send(settings.usage_topic, value=e.value,
                                           key=e.subject.encode()) for e in events]
        except KafkaError as exc:
            raise BrokerUnavailable(f"publishing to {settings.usage_topic} failed: {exc}"
                                    ) from exc
        results = await asyncio.gather(*futures, return_exceptions=True)
    for e, result in zip(events, results, strict=True):
        if isinstance(result, BaseException):
            err.write(f"{name}:{e.number}: not published: {result}\n")
            failed += 1
            continue
        _line(out, {"line": e.number, "id": e.event_id, "source": e.source,
                    "subject": e.subject, "partition": result.partition,
                    "offset": result.offset})
    return failed


# --- the command line: parsers and dispatch of these verbs (wired in commands/main.py) ----

VERBS = frozenset({"events", "dlq", "publish"})


def add_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = verbs.add_parser("events", help="where a usage event went").add_subparsers(
        dest="events_verb", required=True, metavar="COMMAND")
    show = events.add_parser("show", help="applied (ledger), refused (DLQ) or not_found")
    show.add_argument("source")
    show.add_argument("id")
    dlq = verbs.add_parser("dlq", help="the dead-letter topic").add_subparsers(
        dest="dlq_verb", required=True, metavar="COMMAND")
    listing = dlq.add_parser("list", help="one JSON line per DLQ record")
    replay = dlq.add_parser(
        "replay", help="republish refused events that now rate (default codes: "
        + ", ".join(DEFAULT_REPLAY_CODES) + ")")
    for parser in (listing, replay):
        parser.add_argument("--error-code", action="append", default=None, metavar="CODE",
                            help="only records of this error_code (repeatable)")
        parser.add_argument("--since", default=None, metavar="ISO-8601",
                            help="only records written at or after this time")
    replay.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    publish = verbs.add_parser("publish", help="publish usage events (JSON lines) to the "
                               "usage topic, keyed by subject")
    publish.add_argument("file", nargs="?", type=Path, default=None,
                         help="JSON-lines file (default: stdin)")


def add_account_verbs(accounts: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    statement = accounts.add_parser("statement", help="a month's charges and credits")
    statement.add_argument("id")
    statement.add_argument("--month", default=None, metavar="YYYY-MM",
                           help="default: the current month (UTC)")
    statement.add_argument("--csv", action="store_true", help="CSV instead of JSON")


def dispatch(args: argparse.Namespace, settings: Settings) -> Coroutine[Any, Any, int]:
    out = sys.stdout
    if args.verb == "events":
        return cmd_events_show(settings, out, args.source, args.id)
    if args.verb == "publish":
        return cmd_publish(settings, out, sys.stderr, args.file)
    if args.dlq_verb == "list":
        return cmd_dlq_list(settings, out, args.error_code, args.since)
    return cmd_dlq_replay(settings, out, args.error_code, args.since, args.dry_run)


def dispatch_statement(args: argparse.Namespace,
                       settings: Settings) -> Coroutine[Any, Any, int]:
    from commands.statements import cmd_statement

    return cmd_statement(settings, sys.stdout, args.id, args.month, args.csv)

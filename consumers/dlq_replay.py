"""``dlq replay`` (CONTRACT §11): refused events that a fix has cured go back to usage.events.

A record is replayed when its ``error_code`` is one of those asked for and its bytes
now decode and rate: the account exists and the tariffs price it. The original bytes
and key are republished unchanged, so the usage consumer bills them as any event and
the ledger's ``(source, id)`` key makes a second replay (or a replay racing the first)
bill nothing twice. Events the ledger already holds are not republished at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError

from consumers.dlq_reader import scan_dlq
from rating.core.dlq import DlqRecord
from rating.core.errors import BrokerUnavailable, PermanentError, UnknownAccount
from rating.core.events import UsageEvent, decode_usage_event
from rating.core.rate import rate
from rating.core.tariff import TariffBook
from rating.stores.db import Connection
from rating.stores.ledger import AccountInfo, lookup_accounts
from rating.stores.tariff_loads import live_tariff_loads

# What a fix can cure: an account created late, a plan or a rate added.
DEFAULT_REPLAY_CODES = ("unknown_account", "unknown_plan", "no_rate")
_CHUNK = 1000  # records checked against PostgreSQL per round trip
# The largest record a replay sends: a record cut in the DLQ topic goes back whole (from
# the overflow store), up to what the usage consumer fetches from one partition at once.
REPLAY_MAX_RECORD_BYTES = 16 * 1024 * 1024


@dataclass
class ReplayCounts:
    scanned: int = 0
    replayed: int = 0
    still_failing: int = 0
    # Cured but not republished: the ledger has the event already (replayed before).
    already_applied: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # still failing, by code now

    def summary(self) -> dict[str, int]:
        """The one line ``dlq replay`` prints (CONTRACT §11)."""
        return {"scanned": self.scanned, "replayed": self.replayed,
                "still_failing": self.still_failing}


async def wait_for_tariffs(pool: asyncpg.Pool, digest: str, poll_s: float,
                           say: Callable[[str], None], *,
                           timeout_s: float | None = None) -> str:
    """Wait until every running engine has the tariff files ``digest`` in force.

    A fix to the tariffs reaches the engines at their next poll: replayed before that,
    its events would only be refused again. Answers ``in_force``, ``no_engine`` (none
    running: it loads the files when it starts), ``refused`` (an engine tried these
    files and kept its old ones) or ``timeout`` (after ``timeout_s``, by default five
    polls and ten seconds: an engine reading another directory never catches up).
    """
    live_s = 3 * poll_s + 5  # an engine reports at every poll: silent longer, it is gone
    timeout = timeout_s if timeout_s is not None else 5 * poll_s + 10
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        loads = await live_tariff_loads(pool, live_s)
        if not loads:
            return "no_engine"
        behind = [load for load in loads if load.in_force != digest]
        if not behind:
            return "in_force"
        if any(load.attempted == digest for load in behind):
            say("dlq replay: a running engine refused the tariff files as they are now and"
                " keeps its previous ones (its log says why; see `rating-engine tariffs"
                " validate`): events only these files price are refused again")
            return "refused"
        if time.monotonic() >= deadline:
            say(f"dlq replay: the running engines have not loaded the tariff files as they"
                f" are now after {timeout:g} s (is RATING_TARIFFS_DIR the same?); replaying"
                f" anyway: what they cannot price yet is refused again, replay once more")
            return "timeout"
        if not waiting:
            say("dlq replay: waiting for the running engines to load the tariff files as"
                " they are now")
            waiting = True
        await asyncio.sleep(min(0.5, poll_s / 4))


@dataclass(frozen=True, slots=True)
class _Candidate:
    record: DlqRecord
    event: UsageEvent


async def replay_dlq(*, bootstrap: str, dlq_topic: str, usage_topic: str, pool: asyncpg.Pool,
                     book: TariffBook, producer: AIOKafkaProducer | None,
                     codes: Iterable[str] = DEFAULT_REPLAY_CODES,
                     since: datetime | None = None) -> ReplayCounts:
    """Scan the DLQ and republish what now rates; ``producer`` None is a dry run."""
    wanted = frozenset(codes)
    counts = ReplayCounts()
    chosen: set[tuple[str, str]] = set()
    chunk: list[_Candidate] = []
    async for record in scan_dlq(bootstrap, dlq_topic, since=since, pool=pool):
        counts.scanned += 1
        if record.error_code not in wanted:
            continue
        try:
            event = decode_usage_event(record.value or b"")
        except PermanentError as exc:
            counts.still_failing += 1
            counts.failures[exc.code] = counts.failures.get(exc.code, 0) + 1
            continue
        chunk.append(_Candidate(record, event))
        if len(chunk) >= _CHUNK:
            await _settle(chunk, counts, chosen, pool, book, producer, usage_topic)
            chunk = []
    await _settle(chunk, counts, chosen, pool, book, producer, usage_topic)
    return counts


async def _settle(chunk: list[_Candidate], counts: ReplayCounts, chosen: set[tuple[str, str]],
                  pool: asyncpg.Pool, book: TariffBook, producer: AIOKafkaProducer | None,
                  usage_topic: str) -> None:
    if not chunk:
        return
    async with pool.acquire() as conn:
        accounts = await lookup_accounts(conn, list({c.event.account_id for c in chunk}))
        applied = await _in_ledger(conn, [(c.event.source, c.event.event_id) for c in chunk])
    cured: list[DlqRecord] = []
    for candidate in chunk:
        event = candidate.event
        key = (event.source, event.event_id)
        failure = _still_fails(event, accounts.get(event.account_id), book)
        if failure is not None:
            counts.still_failing += 1
            counts.failures[failure] = counts.failures.get(failure, 0) + 1
        elif key in applied or key in chosen:
            counts.already_applied += 1
        else:
            chosen.add(key)
            cured.append(candidate.record)
    refused: list[DlqRecord] = []
    if producer is not None and cured:
        refused = await _republish(producer, usage_topic, cured)
    counts.replayed += len(cured) - len(refused)
    counts.still_failing += len(refused)  # too large for the broker: kept where it is
    if refused:
        counts.failures["too_large"] = counts.failures.get("too_large", 0) + len(refused)


def _still_fails(event: UsageEvent, account: AccountInfo | None, book: TariffBook) -> str | None:
    """The error code the usage consumer would refuse ``event`` with now, or None."""
    try:
        if account is None:
            raise UnknownAccount(f"unknown account {event.account_id!r}")
        rate(event, book, account.plan_id)
    except PermanentError as exc:
        return exc.code
    return None


async def _in_ledger(conn: Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT l.event_source, l.event_id FROM ledger l"
        " JOIN unnest($1::text[], $2::text[]) AS k(s, i)"
        " ON l.event_source = k.s AND l.event_id = k.i",
        [s for s, _ in keys], [i for _, i in keys])
    return {(r["event_source"], r["event_id"]) for r in rows}


_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)


async def _republish(producer: AIOKafkaProducer, topic: str,
                     records: list[DlqRecord]) -> list[DlqRecord]:
    """Send ``records``; the ones too large for the producer or the broker are returned
    (they stay where they are: a replay is never stopped by one record)."""
    too_large: list[DlqRecord] = []
    sent: list[tuple[DlqRecord, asyncio.Future[object]]] = []
    try:
        for record in records:
            try:
                sent.append((record, await producer.send(topic, value=record.value,
                                                         key=record.key)))
            except _TOO_LARGE:
                too_large.append(record)
        outcomes = await asyncio.gather(*(future for _, future in sent),
                                        return_exceptions=True)
        for (record, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, _TOO_LARGE):
                too_large.append(record)
            elif isinstance(outcome, BaseException):
                raise outcome
    except KafkaError as exc:
        raise BrokerUnavailable(f"republishing to {topic} failed: {exc}") from exc
    return too_large

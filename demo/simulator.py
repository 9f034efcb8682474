"""A simulated voice switch: realistic calls, toll-free minutes, SMS and STT jobs on Kafka.

Numbers are real-looking E.164 numbers of the countries every plan prices (from
``phonenumbers``' example numbers); calls arrive as one event a minute of elapsed
time, the last one ``final``. A small share of bad events exercises the DLQ. Like a
real switch it starts nothing new for an account after ``balance.exhausted`` until
``balance.recovered`` (demo/switch_gate.py).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import phonenumbers
from aiokafka import AIOKafkaProducer

from demo.switch_gate import AccountGate, follow_balance_events
from engine.services import kafka_bootstrap, kafka_producer
from rating.settings import Settings
from rating.tariffbook.book import TariffStore

_NUMBER_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
_SMS_TEXTS = ("Your code is 482913", "Meeting moved to 3pm, see you there!",
              "Votre colis arrive demain entre 9h et 12h.", "Grüße aus München 🍺",
              "Reminder: invoice #2231 is due on Friday. Reply STOP to opt out. " * 3)


@dataclass(frozen=True, slots=True)
class Destinations:
    call: tuple[str, ...]
    sms: tuple[str, ...]
    tollfree: tuple[str, ...]


def _example_numbers(regions: set[str]) -> tuple[str, ...]:
    numbers = []
    for region in sorted(regions):
        for kind in _NUMBER_TYPES:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                numbers.append(phonenumbers.format_number(
                    example, phonenumbers.PhoneNumberFormat.E164))
    return tuple(numbers)


def destinations_for(tariffs: TariffStore) -> Destinations:
    """Numbers every plan can price, so simulated traffic is billable on any demo account."""
    book = tariffs.book
    plans = [book.plan(plan_id) for plan_id in book.plan_ids()]
    call = set.intersection(*(set(p.call.by_country) for p in plans if p.call))
    sms = set.intersection(*(set(p.sms.rates) for p in plans if p.sms))
    tollfree: set[str] = set.intersection(
        *({c for c, _ in p.tollfree.rates} for p in plans if p.tollfree))
    tf_numbers = []
    for region in sorted(tollfree):
        example = phonenumbers.example_number_for_type(region,
                                                       phonenumbers.PhoneNumberType.TOLL_FREE)
        if example is not None:
            tf_numbers.append(phonenumbers.format_number(
                example, phonenumbers.PhoneNumberFormat.E164))
    return Destinations(_example_numbers(call), _example_numbers(sms), tuple(tf_numbers))


@dataclass(frozen=True, slots=True)
class Call:
    """A call (or toll-free leg) the switch places: its events are made as it goes."""

    account: str
    type_: str  # usage.call or usage.tollfree
    base: dict[str, object]  # call_id and the number (and direction)
    seconds: int  # how long it would last, if credit allows

    @property
    def call_id(self) -> str:
        return str(self.base["call_id"])


class TrafficGenerator:
    """An endless stream of ``(account_id, event bytes)`` in a realistic mix."""

    def __init__(self, accounts: list[str], destinations: Destinations, *,
                 source: str = "switch-sim-1", bad_ratio: float = 0.0,
                 seed: int | None = None, gate: AccountGate | None = None) -> None:
        self._accounts = accounts
        self._gate = gate  # accounts a real switch would start nothing new for
        self._dest = destinations
        self._source = source
        self._bad_ratio = bad_ratio
        self._random = random.Random(seed)
        self._run = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self._pending: list[tuple[str, bytes]] = []

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return self

    def __next__(self) -> tuple[str, bytes]:
        """The next event; ``StopIteration`` for now when no account may start anything."""
        if not self._pending:
            self._pending = list(reversed(self._next_session()))
            if not self._pending:
                raise StopIteration
        return self._pending.pop()

    def _pick_account(self) -> str | None:
        """A random account that may start new usage (all of them without a gate)."""
        rnd, gate = self._random, self._gate
        if gate is None or not gate.stopped:
            return rnd.choice(self._accounts)
        for _ in range(20):  # most accounts are open: a few draws find one cheaply
            account = rnd.choice(self._accounts)
            if gate.may_start(account):
                return account
        open_ = [a for a in self._accounts if gate.may_start(a)]
        return rnd.choice(open_) if open_ else None

    def _event(self, account: str, type_: str, data: dict[str, object]) -> tuple[str, bytes]:
        n = next(self._ids)
        return account, orjson.dumps({
            "specversion": "1.0", "id": f"sim-{self._run}-{n}", "source": self._source,
            "type": type_, "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "subject": account, "data": data})

    def next_session(self) -> Call | list[tuple[str, bytes]]:
        """The next session: a call or toll-free leg to place, or ready events (SMS, STT,
        a bad one)."""
        rnd = self._random
        account = self._pick_account()
        if account is None:
            return []
        if rnd.random() < self._bad_ratio:
            return [self._bad_event(account)]
        kind = rnd.choices(("call", "tollfree", "sms", "stt"), (55, 10, 25, 10))[0]
        if kind == "sms":
            data: dict[str, object] = {"message_id": f"m-{uuid.uuid4().hex[:10]}",
                                       "destination": rnd.choice(self._dest.sms)}
            if rnd.random() < 0.5:
                data["text"] = rnd.choice(_SMS_TEXTS)
            else:
                data["segments"] = rnd.randint(1, 3)
            return [self._event(account, "usage.sms", data)]
        if kind == "stt":
            return [self._event(account, "usage.stt", {
                "job_id": f"j-{uuid.uuid4().hex[:10]}", "seconds": rnd.randint(5, 900)})]
        total = max(1, int(rnd.expovariate(1 / 150)))
        call_id = f"c-{uuid.uuid4().hex[:10]}"
        if kind == "tollfree" and self._dest.tollfree:
            base: dict[str, object] = {
                "call_id": call_id, "tollfree_number": rnd.choice(self._dest.tollfree),
                "direction": rnd.choice(("inbound", "inbound", "outbound"))}
            return Call(account, "usage.tollfree", base, total)
        return Call(account, "usage.call",
                    {"call_id": call_id, "destination": rnd.choice(self._dest.call)}, total)

    def call_event(self, call: Call, from_s: int, to_s: int, final: bool) -> tuple[str, bytes]:
        """One event of ``call``: elapsed seconds ``from_s..to_s``."""
        return self._event(call.account, call.type_, {
            **call.base, "from_s": from_s, "to_s": to_s, "final": final})

    def _next_session(self) -> list[tuple[str, bytes]]:
        session = self.next_session()
        if not isinstance(session, Call):
            return session
        # One event a minute of elapsed time, the last one final.
        return [self.call_event(session, start, min(start + 60, session.seconds),
                                min(start + 60, session.seconds) == session.seconds)
                for start in range(0, session.seconds, 60)]

    @property
    def source(self) -> str:
        return self._source

    def _bad_event(self, account: str) -> tuple[str, bytes]:
        choice = self._random.randrange(3)
        if choice == 0:
            return account, b'{"specversion": "1.0", "id": "broken'
        if choice == 1:  # a country no plan prices
            return self._event(account, "usage.call", {
                "call_id": "c-x", "destination": "+8823401234567", "from_s": 0, "to_s": 30})
        return self._event(account, "usage.call", {"call_id": "c-y", "destination": "+44207",
                                                   "from_s": 60, "to_s": 30})


async def publish(producer: AIOKafkaProducer, topic: str, traffic: TrafficGenerator,
                  rate_per_s: float, stop: asyncio.Event, *,
                  duration_s: float | None = None) -> int:
    """Publish at ``rate_per_s`` until ``stop`` or ``duration_s``; return events sent.

    Events not sent when due (every account stopped) are not sent later in a burst:
    a switch does not make up for calls it did not start.
    """
    sent = scheduled = 0
    started = time.monotonic()
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if duration_s is not None and elapsed >= duration_s:
            break
        due = int(elapsed * rate_per_s) + 1 - scheduled
        scheduled += max(0, due)
        futures = []
        for account, value in itertools.islice(traffic, max(0, due)):
            futures.append(await producer.send(topic, value=value, key=account.encode()))
        sent += len(futures)
        if futures:
            await asyncio.gather(*futures)
        await asyncio.sleep(0.01)
    return sent


def demo_accounts(count: int) -> list[str]:
    return [f"acct-{i:04d}" for i in range(1, count + 1)]


MAX_RATE_PER_S = 1_000_000.0
MAX_DEMO_ACCOUNTS = 100_000


def parse_rate(text: str) -> float:
    """``"200/s"`` or ``"200"`` -> 200.0 events per second."""
    number = text.removesuffix("/s").strip()
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", number, re.ASCII):
        raise ValueError(f"--rate: expected N/s, got {text!r}")
    value = float(number)
    if not 0 < value <= MAX_RATE_PER_S:  # NaN too
        raise ValueError(f"--rate: expected more than 0 and at most {MAX_RATE_PER_S:.0f}/s,"
                         f" got {text!r}")
    return value


def check_options(args: argparse.Namespace) -> None:
    """``dev`` and ``simulate``: a bad option is one line before anything starts."""
    parse_rate(args.rate)
    if not 1 <= args.accounts <= MAX_DEMO_ACCOUNTS:
        raise ValueError(f"--accounts: expected 1 to {MAX_DEMO_ACCOUNTS}, got {args.accounts}")
    duration = getattr(args, "duration", None)
    if duration is not None and not 0 < duration <= 10 * 365 * 86_400:  # NaN too
        raise ValueError(f"--duration: expected seconds, more than 0, got {duration}")


async def simulate_command(settings: Settings, args: argparse.Namespace) -> int:
    rate_per_s = parse_rate(args.rate)  # checked before (check_options)
    gate = AccountGate()
    traffic = TrafficGenerator(demo_accounts(args.accounts),
                               destinations_for(TariffStore(settings.tariffs_dir)), gate=gate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with kafka_bootstrap(settings) as (bootstrap, _pid), \
            kafka_producer(bootstrap) as producer:
        follower = asyncio.create_task(
            follow_balance_events(bootstrap, settings.balance_topic, gate, stop))
        try:
            sent = await publish(producer, settings.usage_topic, traffic, rate_per_s, stop,
                                 duration_s=args.duration)
        finally:
            stop.set()
            await follower
    print(f"published {sent} usage events to {settings.usage_topic}", flush=True)
    return 0

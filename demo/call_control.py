"""A simulated voice switch with real-time call control: calls go through credit reservations.

For each call (or toll-free leg) it reserves credit through the account API, publishes the
call's events a minute of elapsed time at a time, extends before the granted seconds run
out, and ends the call with ``final: true``. A call the credit cannot cover is not placed
(402 on reserve), and one whose extension is refused is cut at the granted limit. SMS and
speech-to-text sessions are published as they are. Calls are compressed in time: a
call's minutes are published one after another, not a minute apart.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from demo import simulator
from demo.simulator import Call, TrafficGenerator
from demo.switch_gate import AccountGate, follow_balance_events
from engine.services import kafka_bootstrap, kafka_producer
from rating.core.errors import CommandError
from rating.settings import Settings
from rating.tariffbook.book import TariffStore

log = logging.getLogger(__name__)


@dataclass
class CallControlStats:
    """What the switch saw; ``dev`` shows it on its status line."""

    outcomes: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        o = self.outcomes
        return (f"calls reserved {o['reserved']:,} | refused {o['refused']:,}"
                f" | extended {o['extended']:,} | cut {o['cut']:,}")


class ReservingSwitch:
    """Places calls through ``POST /v1/accounts/{id}/reservations`` (switch credential)."""

    def __init__(self, http: aiohttp.ClientSession, api_url: str, token: str,
                 traffic: TrafficGenerator, stats: CallControlStats | None = None) -> None:
        self._http = http
        self._api = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._traffic = traffic
        self.stats = stats or CallControlStats()

    async def _post(self, path: str, body: dict[str, Any] | None = None
                    ) -> tuple[int, dict[str, Any]]:
        async with self._http.post(self._api + path, json=body, headers=self._headers,
                                   timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, await response.json(content_type=None)

    async def session(self) -> list[tuple[str, bytes]]:
        """The events of the next session, after the call control it needed."""
        session = self._traffic.next_session()
        if not isinstance(session, Call):
            return session
        return await self.place(session)

    async def place(self, call: Call) -> list[tuple[str, bytes]]:
        """Reserve, then one event a minute; extend when the grant runs out."""
        base = f"/v1/accounts/{call.account}/reservations"
        body = {"source": self._traffic.source, "call_id": call.call_id,
                "service": "call" if call.type_ == "usage.call" else "tollfree",
                **{k: v for k, v in call.base.items() if k != "call_id"}}
        status, answer = await self._post(base, body)
        if status == 402:
            self.stats.outcomes["refused"] += 1
            return []  # not enough credit: the call is not put through
        if status not in (200, 201):
            # Without call control (an error here): the call goes on, billed as always.
            self.stats.outcomes[f"error {status}"] += 1
            log.warning("reservation refused with %s: %s", status, answer)
            return self._uncontrolled(call)
        self.stats.outcomes["reserved"] += 1
        rid, granted = answer["reservation_id"], int(answer["granted_seconds"])
        events: list[tuple[str, bytes]] = []
        elapsed, end, final = 0, call.seconds, False
        while elapsed < end:
            if granted < end and elapsed + 60 >= granted:
                # The grant runs out within the next minute: extend first.
                status, answer = await self._post(f"{base}/{rid}/extend")
                if status == 200:
                    self.stats.outcomes["extended"] += 1
                    granted = int(answer["granted_seconds"])
                else:  # out of credit (402): the call is cut where its grant ends
                    self.stats.outcomes["cut"] += 1
                    end = granted
            step = min(elapsed + 60, end, granted)
            if step <= elapsed:
                break
            final = step == end
            events.append(self._traffic.call_event(call, elapsed, step, final))
            elapsed = step
        if not final:  # cut right at a grant's end: no event left to say final
            await self._release(base, rid)
        return events

    async def _release(self, base: str, rid: str) -> None:
        async with self._http.delete(f"{self._api}{base}/{rid}", headers=self._headers,
                                     timeout=aiohttp.ClientTimeout(total=10)) as response:
            await response.read()

    def _uncontrolled(self, call: Call) -> list[tuple[str, bytes]]:
        return [self._traffic.call_event(call, start, min(start + 60, call.seconds),
                                         min(start + 60, call.seconds) == call.seconds)
                for start in range(0, call.seconds, 60)]


async def publish_controlled(producer: AIOKafkaProducer, topic: str, switch: ReservingSwitch,
                             rate_per_s: float, stop: asyncio.Event, *,
                             duration_s: float | None = None, calls_at_once: int = 32) -> int:
    """Like ``simulator.publish`` (``rate_per_s`` events a second), with call control.

    Like a switch, it has many calls in progress at once (``calls_at_once``): each waits
    on the account API for its own reservation, not on the others'.
    """
    sent = 0
    started = time.monotonic()

    def running() -> bool:
        elapsed = time.monotonic() - started
        return not stop.is_set() and (duration_s is None or elapsed < duration_s)

    async def place_calls() -> None:
        nonlocal sent
        while running():
            if sent >= (time.monotonic() - started) * rate_per_s:
                await asyncio.sleep(0.01)
                continue
            try:
                events = await switch.session()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("account API unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            # A call refused for credit is paced like one event.
            sent += max(1, len(events))
            futures = [await producer.send(topic, value=value, key=account.encode())
                       for account, value in events]
            await asyncio.gather(*futures)

    await asyncio.gather(*(place_calls() for _ in range(calls_at_once)))
    return sent


async def simulate_command(settings: Settings, args: argparse.Namespace) -> int:
    """``rating-engine simulate``: with ``--reservations``, calls go through call control."""
    if not args.reservations:
        return await simulator.simulate_command(settings, args)
    token = settings.switch_token
    if token is None:
        raise CommandError("--reservations needs RATING_SWITCH_TOKEN (the switch credential)")
    rate_per_s = simulator.parse_rate(args.rate)  # checked before (check_options)
    gate = AccountGate()  # as without reservations: nothing new after balance.exhausted
    traffic = TrafficGenerator(simulator.demo_accounts(args.accounts),
                               simulator.destinations_for(TariffStore(settings.tariffs_dir)),
                               gate=gate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api_url = args.api or f"http://127.0.0.1:{settings.http_port}"
    async with aiohttp.ClientSession() as http, kafka_bootstrap(settings) as (bootstrap, _), \
            kafka_producer(bootstrap) as producer:
        follower = asyncio.create_task(
            follow_balance_events(bootstrap, settings.balance_topic, gate, stop))
        switch = ReservingSwitch(http, api_url, token, traffic)
        try:
            sent = await publish_controlled(producer, settings.usage_topic, switch,
                                            rate_per_s, stop, duration_s=args.duration)
        finally:
            stop.set()
            await follower
    print(f"published {sent} usage events to {settings.usage_topic}; "
          f"{switch.stats.line()}", flush=True)
    return 0

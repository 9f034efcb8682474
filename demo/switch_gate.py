"""What a voice switch knows of its accounts: which may start new billable usage.

A real switch reads ``balance.events`` (CONTRACT §5): after ``balance.exhausted`` it
starts nothing new for the account (what is already under way goes on) until
``balance.recovered``. The simulated switch does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


class AccountGate:
    """Accounts stopped by ``balance.exhausted`` and not yet recovered."""

    def __init__(self, stopped: set[str] | None = None) -> None:
        self.stopped: set[str] = set(stopped or ())

    def may_start(self, account_id: str) -> bool:
        return account_id not in self.stopped

    def apply(self, raw: bytes | None) -> None:
        """Take one balance event (CloudEvents JSON) into account; anything else is ignored."""
        try:
            event = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        data = event.get("data")
        account = data.get("account_id") if isinstance(data, dict) else None
        if not isinstance(account, str):
            account = event.get("subject")
        if not isinstance(account, str):
            return
        if event.get("type") == "balance.exhausted":
            self.stopped.add(account)
        elif event.get("type") == "balance.recovered":
            self.stopped.discard(account)


async def follow_balance_events(bootstrap: str, topic: str, gate: AccountGate,
                                stop: asyncio.Event) -> None:
    """Feed ``gate`` from ``topic`` (from its start: the latest event of an account wins)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        await consumer.start()
        while not stop.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:  # a broker hiccup: a switch keeps going
                log.warning("reading %s failed (%s); retrying", topic, exc)
                await asyncio.sleep(1)
                continue
            for records in batch.values():
                for record in records:
                    gate.apply(record.value)
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()

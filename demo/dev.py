"""``rating-engine dev``: demo accounts, a simulated voice switch and a live status line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import sys
from dataclasses import replace

import aiohttp

from api.operator import portal_url
from demo.call_control import CallControlStats, ReservingSwitch, publish_controlled
from demo.simulator import (
    TrafficGenerator,
    demo_accounts,
    destinations_for,
    parse_rate,
    publish,
)
from demo.status_line import run_status_line
from demo.switch_gate import AccountGate, follow_balance_events
from engine.assembly import Engine, serve
from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.sessions import MAX_TTL_SECONDS, SessionStore

DEMO_BALANCE = parse_amount("8.00")
DEMO_THRESHOLD = parse_amount("5.00")
DEMO_RECHARGE = parse_amount("20.00")
DEV_PAYMENTS = "succeed"


async def create_demo_accounts(store: AccountStore, engine: Engine, count: int) -> list[str]:
    """acct-0001..N, alternating the sample plans; every other one with auto-recharge."""
    book = engine.tariffs.book
    plans = [p for p in ("standard", "us-business") if p in book.plan_ids()] or book.plan_ids()
    ids = demo_accounts(count)
    new = [NewAccount(account_id, plans[i % len(plans)], book.currency(plans[i % len(plans)]),
                      DEMO_BALANCE, DEMO_THRESHOLD) for i, account_id in enumerate(ids)]
    created, _existing = await store.create_many(new)
    if created:
        for account_id in ids[::2]:
            await store.set_auto_recharge(account_id, amount=DEMO_RECHARGE, below=DEMO_THRESHOLD)
    return ids


async def demo_billing_link(engine: Engine, account_id: str) -> str:
    """A ready-to-open customer billing link (CONTRACT §8) for one demo account."""
    issued = await SessionStore(engine.pool).issue(account_id, ttl_seconds=MAX_TTL_SECONDS,
                                                   issued_by="dev")
    base = engine.settings.public_url or f"http://127.0.0.1:{engine.http_port}"
    return portal_url(base, issued.token)


async def start_dev(engine: Engine, options: argparse.Namespace,
                    stack: contextlib.AsyncExitStack) -> list[asyncio.Task[None]]:
    store = AccountStore(engine.pool)
    accounts = await create_demo_accounts(store, engine, options.accounts)
    # Balances outlive the embedded broker's topics (kept in memory): an account left
    # exhausted by an earlier run starts stopped, as a switch would remember it.
    exhausted = await engine.pool.fetch(
        "SELECT id FROM accounts WHERE id = ANY($1::text[]) AND balance <= 0", accounts)
    gate = AccountGate({r["id"] for r in exhausted})
    traffic = TrafficGenerator(accounts, destinations_for(engine.tariffs), bad_ratio=0.002,
                               gate=gate)
    stop = asyncio.Event()
    stack.callback(stop.set)

    calls: CallControlStats | None = None
    token = engine.settings.switch_token
    if options.reservations and token is not None:
        http = aiohttp.ClientSession()
        stack.push_async_callback(http.close)
        calls = CallControlStats()
        switch = ReservingSwitch(http, f"http://127.0.0.1:{engine.http_port}", token, traffic,
                                 calls)

        async def simulate() -> None:
            await publish_controlled(engine.producer, engine.settings.usage_topic, switch,
                                     parse_rate(options.rate), stop)
    else:
        async def simulate() -> None:
            await publish(engine.producer, engine.settings.usage_topic, traffic,
                          parse_rate(options.rate), stop)

    control = ("calls through credit reservations (switch token: RATING_SWITCH_TOKEN="
               f"{token})" if calls is not None else "calls without reservations")
    print(f"dev: {len(accounts)} demo accounts (acct-0001..), simulated switch at "
          f"{options.rate}, {control}", file=sys.stderr, flush=True)
    print(f"dev: billing page of {accounts[0]} (valid a day): "
          f"{await demo_billing_link(engine, accounts[0])}", file=sys.stderr, flush=True)
    return [asyncio.create_task(simulate(), name="simulator"),
            asyncio.create_task(follow_balance_events(
                engine.endpoints.kafka_bootstrap, engine.settings.balance_topic, gate, stop),
                name="switch-balance-events"),
            asyncio.create_task(run_status_line(
                sys.stderr, lambda: len(gate.stopped),
                extra=None if calls is None else calls.line), name="status-line")]


def dev_command(settings: Settings, options: argparse.Namespace) -> int:
    """``rating-engine dev``: the engine with demo accounts and simulated traffic.

    Card payments are simulated: ``succeed`` unless RATING_PAYMENT_SIMULATION says otherwise.
    Its options were checked before (``demo.simulator.check_options``).
    """
    if options.reservations and settings.switch_token is None:
        # The simulated switch needs a credential; one for this run only.
        settings = replace(settings, switch_token=secrets.token_urlsafe(18))
    settings = replace(settings,
                       payment_simulation=settings.payment_simulation or DEV_PAYMENTS)
    # The simulated switch's own requests (tens a second) would bury the status line:
    # in dev, only requests the engine failed (5xx) are logged (-v logs them all again).
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("api.requests").setLevel(logging.WARNING)

    async def on_started(engine: Engine,
                         stack: contextlib.AsyncExitStack) -> list[asyncio.Task[None]]:
        return await start_dev(engine, options, stack)

    return asyncio.run(serve(settings, on_started=on_started))

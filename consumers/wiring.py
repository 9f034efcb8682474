"""Starts the parts of the engine around the debit path: the account API and recharges."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumers.engine import Engine, Extras


async def start_api_and_recharge(engine: Engine,
                                 stack: contextlib.AsyncExitStack) -> Extras:
    import asyncio

    from consumers.engine import Extras
    from consumers.http_api import HttpApi
    from consumers.recharge_worker import RechargeWorker
    from rating.accounts import AccountStore
    from rating.payments import SimulatedProvider
    from rating.recharges import TopupService

    provider = SimulatedProvider.from_spec(engine.settings.payment_simulation)
    store = AccountStore(engine.pool)
    topups = TopupService(engine.pool, provider)
    api = HttpApi(store=store, tariffs=engine.tariffs, topups=topups, settings=engine.settings,
                  readiness=engine.readiness)
    await api.start()
    stack.push_async_callback(api.close)
    worker = RechargeWorker(engine.settings, engine.endpoints.kafka_bootstrap, engine.pool,
                            provider)
    await worker.start()
    stack.push_async_callback(worker.close)
    task = asyncio.create_task(worker.run(), name="recharge-worker")
    return Extras(tasks=[task], stoppers=[worker.request_stop], http_port=api.port or 0)

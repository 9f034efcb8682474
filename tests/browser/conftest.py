"""A running engine (real PostgreSQL, broker, consumers, recharge worker, API) and a real
browser (Debian's chromium driven by Playwright), shared by the billing-page tests.

The engine runs in this process with a simulated provider the tests hold, so that each
test can tell it how one account's card behaves. Screenshots of the page's states are
written to ``tmp/artifacts/billing/`` (not committed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

from engine.assembly import serve
from engine.embedded import free_port
from rating.core.money import parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from tests.support import REPO, wait_until, write_flat_tariffs

pytestmark = pytest.mark.browser
TOKEN = "browser-tests-operator"
ARTIFACTS = REPO / "tmp" / "artifacts" / "billing"


def chromium_path() -> str | None:
    """Debian's chromium (Playwright's own browser download is not used)."""
    for candidate in (os.environ.get("RATING_TEST_CHROMIUM"), shutil.which("chromium"),
                      "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@dataclass
class RunningEngine:
    url: str
    settings: Settings
    pool: asyncpg.Pool
    provider: SimulatedProvider
    store: AccountStore

    async def account(self, account_id: str, balance: str, threshold: str = "0") -> str:
        await self.store.create(NewAccount(account_id, "flat", "EUR", parse_amount(balance),
                                           parse_amount(threshold)))
        return account_id

    async def link(self, account_id: str, ttl: int = 900) -> str:
        """The portal link an operator would hand out (POST /v1/accounts/{id}/sessions)."""
        async with aiohttp.ClientSession() as http, http.post(
                f"{self.url}/v1/accounts/{account_id}/sessions", json={"ttl_seconds": ttl},
                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 201, await response.text()
            return str((await response.json())["url"])

    async def balance(self, account_id: str) -> str:
        async with aiohttp.ClientSession() as http, http.get(
                f"{self.url}/v1/accounts/{account_id}",
                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            return str((await response.json())["balance"])


@pytest.fixture(scope="module")
async def engine(pg_server_dsn: str, kafka_bootstrap: str,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningEngine]:
    root = tmp_path_factory.mktemp("billing-engine")
    database = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:  # a copy of the migrated template of tests/conftest.py
        await admin.execute(f'CREATE DATABASE "{database}" TEMPLATE "rating_test_template"')
    finally:
        await admin.close()
    uid = uuid.uuid4().hex[:10]
    port = free_port()
    settings = Settings(
        database_url=f"{pg_server_dsn.rpartition('/')[0]}/{database}",
        kafka_bootstrap=tuple(kafka_bootstrap.split(",")), data_dir=root / "data",
        tariffs_dir=write_flat_tariffs(root / "tariffs"), metrics_port=0, http_port=port,
        http_host="127.0.0.1", api_token=TOKEN, usage_topic=f"usage.events.{uid}",
        dlq_topic=f"usage.events.dlq.{uid}", balance_topic=f"balance.events.{uid}",
        consumer_group=f"rating-{uid}", recharge_group=f"recharge-{uid}")
    provider = SimulatedProvider()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, provider=provider, stop=stop))
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        if task.done():
            raise AssertionError(f"the engine stopped: {task.exception()!r}")
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(ready, timeout_s=60, what="the engine to be ready")
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        yield RunningEngine(url, settings, pool, provider, AccountStore(pool))
    finally:
        await pool.close()
        stop.set()
        assert await asyncio.wait_for(task, 60) == 0
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): "
                    "the billing page's browser tests need it")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(chromium: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (no cookies) per test."""
    context = await chromium.new_context(viewport={"width": 1000, "height": 1400})
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

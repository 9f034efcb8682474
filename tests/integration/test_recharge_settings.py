"""The daily limit and notification thresholds as the API and the command line set them,
and what the account JSON shows of recharges (the billing page reads it)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from commands.accounts import cmd_auto_recharge, cmd_show
from commands.main import _parser
from rating.core.errors import CommandError
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.recharges import RechargeService
from tests.integration.test_http_api import AUTH, TOKEN, Api, assert_matches, start_api
from tests.payments_support import EUR, FAST, debit
from tests.support import write_flat_tariffs

PATH = "/v1/accounts/acct-1/auto-recharge"


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Api]:
    configured = replace(settings, api_token=TOKEN, http_host="127.0.0.1", http_port=0)
    provider = SimulatedProvider()
    server = await start_api(configured, pool, write_flat_tariffs(tmp_path / "tariffs"),
                             provider, {"postgresql": True})
    await AccountStore(pool).create(NewAccount("acct-1", "flat", "EUR", EUR("30.00"),
                                               EUR("5.00")))
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{server.port}", http, provider, {}, pool)
    await server.close()


async def test_the_api_sets_the_limit_and_alert_thresholds(api: Api) -> None:
    status, body = await api.call("PUT", PATH, {
        "enabled": True, "amount": "20.00", "below": "5.00", "max_per_day": 2,
        "alert_thresholds": ["10.00", "50.00"]}, headers=AUTH)
    assert status == 200, body
    assert_matches(body, "Account")
    assert body["auto_recharge"]["max_per_day"] == 2
    assert body["auto_recharge"]["disabled_reason"] is None
    assert body["alert_thresholds"] == ["50.000000", "10.000000"]
    assert body["runway"] is None and body["last_recharge"] is None

    # Absent fields are left as they are; turning it off may change the limit too.
    status, body = await api.call("PUT", PATH, {"enabled": False, "max_per_day": 4},
                                  headers=AUTH)
    assert status == 200 and body["auto_recharge"]["enabled"] is False
    assert body["auto_recharge"]["max_per_day"] == 4
    assert body["alert_thresholds"] == ["50.000000", "10.000000"]
    status, body = await api.call("PUT", PATH, {"enabled": False, "alert_thresholds": []},
                                  headers=AUTH)
    assert status == 200 and body["alert_thresholds"] == []

    for payload, expected in [
            ({"enabled": True, "amount": "20", "below": "5", "max_per_day": 0}, 422),
            ({"enabled": True, "amount": "20", "below": "5", "max_per_day": 101}, 422),
            ({"enabled": False, "max_per_day": "5"}, 400),
            ({"enabled": False, "max_per_day": 2.5}, 400),
            ({"enabled": False, "max_per_day": True}, 400),
            ({"enabled": False, "alert_thresholds": "50"}, 400),
            ({"enabled": False, "alert_thresholds": [50]}, 400),
            ({"enabled": False, "alert_thresholds": ["5e1"]}, 400),
            ({"enabled": False, "alert_thresholds": ["-1"]}, 422),
            ({"enabled": False, "alert_thresholds": [str(n) for n in range(11)]}, 422)]:
        status, error = await api.call("PUT", PATH, payload, headers=AUTH)
        assert status == expected, (payload, error)
        assert_matches(error, "Error")
    # A refused request changed nothing.
    _, body = await api.call("GET", "/v1/accounts/acct-1", headers=AUTH)
    assert body["auto_recharge"]["max_per_day"] == 4 and body["alert_thresholds"] == []


async def test_the_account_json_shows_the_last_recharge_and_the_runway(api: Api) -> None:
    await debit(api.pool, "acct-1", "28.00")  # 30 -> 2, spent 4.00 a day over the week
    status, body = await api.call("PUT", PATH, {"enabled": True, "amount": "20.00",
                                                "below": "5.00"}, headers=AUTH)
    assert status == 200
    assert body["last_recharge"]["status"] == "requested"
    api.provider.set_behaviour("hard_decline")
    assert await RechargeService(api.pool, api.provider, FAST).run_due() == ["hard_declined"]

    status, body = await api.call("GET", "/v1/accounts/acct-1", headers=AUTH)
    assert status == 200
    assert_matches(body, "Account")
    assert body["auto_recharge"]["enabled"] is False
    assert body["auto_recharge"]["disabled_reason"] == "hard_decline"
    assert body["auto_recharge"]["disabled_at"] is not None
    last = body["last_recharge"]
    assert (last["status"], last["amount"], last["attempt"], last["reason"]) == (
        "failed", "20.000000", 1, "card_closed")
    assert last["at"] is not None
    assert body["average_daily_spend"] == "4.000000"
    assert body["runway"] == 0.5  # 2.00 at 4.00 a day


async def test_the_command_line_sets_the_limit_and_alert_thresholds(
        settings: Settings, pool: asyncpg.Pool) -> None:
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR", EUR("30.00")))
    args = _parser().parse_args(["accounts", "auto-recharge", "acct-1", "--amount", "20",
                                 "--below", "5", "--max-per-day", "3",
                                 "--alert-thresholds", "50.00,10"])
    assert (args.max_per_day, args.alert_thresholds) == (3, "50.00,10")

    out = io.StringIO()
    assert await cmd_auto_recharge(settings, out, "acct-1", "20", "5", False, 3,
                                   "50.00,10") == 0
    shown = orjson.loads(out.getvalue())
    assert shown["auto_recharge"]["enabled"] is True
    assert shown["auto_recharge"]["max_per_day"] == 3
    assert shown["alert_thresholds"] == ["50.000000", "10.000000"]
    # Alone, the limit or the thresholds change only themselves.
    out = io.StringIO()
    assert await cmd_auto_recharge(settings, out, "acct-1", None, None, False, 1, None) == 0
    assert await cmd_auto_recharge(settings, out, "acct-1", None, None, False, None, "") == 0
    out = io.StringIO()
    assert await cmd_show(settings, out, "acct-1") == 0
    shown = orjson.loads(out.getvalue())
    assert shown["auto_recharge"]["enabled"] is True
    assert shown["auto_recharge"]["max_per_day"] == 1 and shown["alert_thresholds"] == []
    assert "runway" in shown and "last_recharge" in shown

    for max_per_day, thresholds, needle in [(0, None, "--max-per-day"),
                                            (None, "50,ten", "--alert-thresholds"),
                                            (None, "-5", "--alert-thresholds")]:
        with pytest.raises(CommandError) as raised:
            await cmd_auto_recharge(settings, io.StringIO(), "acct-1", None, None, False,
                                    max_per_day, thresholds)
        assert str(raised.value).startswith(needle) and "\n" not in str(raised.value)
    with pytest.raises(CommandError, match="--amount and --below, or --off"):
        await cmd_auto_recharge(settings, io.StringIO(), "acct-1", "20", None, False, 3, None)
    assert (await AccountStore(pool).get("acct-1")).auto_recharge_max_per_day == 1

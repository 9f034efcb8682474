"""``accounts import`` and friends against a real database."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from commands.accounts import cmd_import, cmd_topup
from rating.core.errors import CommandError
from rating.settings import Settings


async def test_import_creates_new_accounts_and_leaves_existing_ones_untouched(
        settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> None:
    first = tmp_path / "first.csv"
    first.write_text("id,plan,balance,low_balance_threshold\n"
                     "imp-1,standard,5,1\nimp-2,us-business,7.50,\n\n")
    out = io.StringIO()
    assert await cmd_import(settings, out, first) == 0
    assert out.getvalue() == "created: 2, existing (untouched): 0\n"
    await pool.execute("UPDATE accounts SET low_balance_threshold = 3 WHERE id = 'imp-1'")
    second = tmp_path / "second.csv"  # as a spreadsheet saves it: a byte-order mark
    second.write_bytes(b"\xef\xbb\xbfid,plan,balance\nimp-1,standard,999\nimp-3,standard,0\n")
    out = io.StringIO()
    assert await cmd_import(settings, out, second) == 0
    assert out.getvalue() == "created: 1, existing (untouched): 1\n"
    rows = {r["id"]: r for r in await pool.fetch("SELECT * FROM accounts")}
    assert rows["imp-1"]["balance"] == 5_000_000 and rows["imp-1"]["low_balance_threshold"] == 3
    assert rows["imp-2"]["currency"] == "USD" and rows["imp-2"]["balance"] == 7_500_000


async def test_import_reports_every_bad_row_by_line_and_creates_nothing(
        settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,plan,balance\nok-1,standard,1\nx,nosuch,1\ny,standard,1.5e3\n"
                   "ok-1,standard,2\nz,standard\n")
    with pytest.raises(CommandError) as raised:
        await cmd_import(settings, io.StringIO(), bad)
    lines = str(raised.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{bad}:3", f"{bad}:4", f"{bad}:5", f"{bad}:6"]
    assert "nosuch" in lines[0] and "duplicate" in lines[2]
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0


async def test_cli_topup_is_idempotent(settings: Settings, pool: asyncpg.Pool,
                                       tmp_path: Path) -> None:
    settings = replace(settings, payment_simulation="succeed")
    csv = tmp_path / "a.csv"
    csv.write_text("id,plan,balance\nacct-1,standard,1\n")
    await cmd_import(settings, io.StringIO(), csv)
    for _ in range(2):
        assert await cmd_topup(settings, io.StringIO(), "acct-1", "2.50", "key-1") == 0
    assert await pool.fetchval("SELECT balance FROM accounts") == 3_500_000

"""The command line as an operator runs it (a process reading its environment): top-ups
through the configured provider only, bounded amounts, account ids within the rule."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from rating.core.money import parse_amount
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from tests.support import REPO

ENGINE = [sys.executable, "-m", "commands.main"]


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update({"RATING_DATABASE_URL": settings.database_url or "",
                "RATING_TARIFFS_DIR": str(settings.tariffs_dir),
                "RATING_DATA_DIR": str(settings.data_dir)})
    env.update(extra)
    return env


async def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*ENGINE, *args], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


async def credits(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM ledger")
    return count


async def test_cli_topup_with_a_declining_provider_refuses_and_credits_nothing(
        settings: Settings, pool: asyncpg.Pool) -> None:
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR",
                                               parse_amount("1.00")))
    declined = await run_cli(cli_env(settings, RATING_PAYMENT_SIMULATION="decline"),
                             "accounts", "topup", "acct-1", "5.00", "--idempotency-key", "k1")
    assert declined.returncode == 1
    assert "payment declined" in one_error_line(declined)
    unset = await run_cli(cli_env(settings), "accounts", "topup", "acct-1", "5.00",
                          "--idempotency-key", "k2")
    assert unset.returncode == 2
    assert one_error_line(unset).startswith("rating-engine: error: RATING_PAYMENT_SIMULATION:")
    assert await credits(pool) == 0
    assert await pool.fetchval("SELECT balance FROM accounts") == parse_amount("1.00")
    assert await pool.fetchval("SELECT count(*) FROM topup_payments WHERE status <> 'declined'"
                               ) == 0
    paid = await run_cli(cli_env(settings, RATING_PAYMENT_SIMULATION="succeed"),
                         "accounts", "topup", "acct-1", "5.00", "--idempotency-key", "k3")
    assert paid.returncode == 0, paid.stderr
    assert await pool.fetchval("SELECT balance FROM accounts") == parse_amount("6.00")


async def test_cli_amounts_and_ids_are_refused_in_one_line_before_anything_is_done(
        settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> None:
    env = cli_env(settings, RATING_PAYMENT_SIMULATION="succeed", RATING_MAX_AMOUNT="100")
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR"))
    refused = [
        (("accounts", "topup", "acct-1", "100.01", "--idempotency-key", "k"), "at most 100"),
        (("accounts", "adjust", "acct-1", "-100.000001", "--reason", "r",
          "--idempotency-key", "k"), "at most 100"),
        (("accounts", "auto-recharge", "acct-1", "--amount", "101", "--below", "1"),
         "at most 100"),
        (("accounts", "create", "big", "--plan", "standard", "--balance", "-100.5"),
         "at most 100"),
        (("accounts", "create", "a/b", "--plan", "standard"), "A-Z a-z 0-9"),
        (("accounts", "topup", "a/b", "1", "--idempotency-key", "k"), "A-Z a-z 0-9"),
        (("accounts", "adjust", "acct-1", "1", "--reason", " ", "--idempotency-key", "k"),
         "--reason"),
    ]
    for args, needle in refused:
        result = await run_cli(env, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert needle in one_error_line(result), args
    bad = tmp_path / "bad.csv"
    bad.write_text("id,plan,balance\nok-1,standard,1\nwith space,standard,1\n"
                   "rich,standard,100.000001\n")
    result = await run_cli(env, "accounts", "import", str(bad))
    assert result.returncode == 1
    lines = result.stderr.removeprefix("rating-engine: error: ").splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{bad}:3", f"{bad}:4"]
    assert "A-Z a-z 0-9" in lines[0] and "at most 100" in lines[1]
    assert await credits(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    created = await run_cli(env, "accounts", "create", "Acct.01:eu_west-2", "--plan",
                            "standard", "--balance", "-100")
    assert created.returncode == 0, created.stderr


async def test_cli_ids_that_are_not_utf8_and_a_latin1_import_are_one_line_each(
        settings: Settings, pool: asyncpg.Pool, tmp_path: Path) -> None:
    """What a terminal or a spreadsheet export can hand the CLI: one line, exit 1."""
    env = cli_env(settings)
    await AccountStore(pool).create(NewAccount("acct-1", "standard", "EUR"))
    not_utf8 = os.fsdecode(b"a\xffb")  # the bytes a shell passes, as Python sees them
    for args in (("accounts", "show", not_utf8), ("accounts", "portal-link", not_utf8),
                 ("accounts", "statement", not_utf8), ("audit", "--account", not_utf8)):
        result = await run_cli(env, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert "A-Z a-z 0-9" in one_error_line(result), args
    latin1 = tmp_path / "export.csv"
    latin1.write_bytes(b"id,plan,balance\nok-1,standard,1\ncaf\xe9,standard,1\n")
    result = await run_cli(env, "accounts", "import", str(latin1))
    assert result.returncode == 1
    assert one_error_line(result).endswith(
        f"{latin1}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8")
    both = await run_cli(env, "accounts", "auto-recharge", "acct-1", "--amount", "5",
                         "--below", "2", "--off")
    assert both.returncode == 1 and "--off" in one_error_line(both)
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1

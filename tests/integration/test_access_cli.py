"""``accounts portal-link`` and ``audit`` as an operator runs them: a real process."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import asyncpg
import orjson

from rating.settings import Settings
from rating.stores.sessions import SessionStore, token_digest
from tests.support import engine_env


async def cli(settings: Settings, *args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "commands.main", *args, env=engine_env(settings, **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2])
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_portal_link_prints_a_working_url_alone(settings: Settings,
                                                      pool: asyncpg.Pool) -> None:
    settings = replace(settings, http_port=8123)
    code, _, err = await cli(settings, "accounts", "create", "acct-9", "--plan", "standard",
                             "--balance", "3")
    assert code == 0, err
    code, out, err = await cli(settings, "accounts", "portal-link", "acct-9", "--ttl", "60")
    assert code == 0, err
    assert out.count("\n") == 1
    url = out.strip()
    assert url.startswith("http://127.0.0.1:8123/billing?session=")
    token = url.rpartition("=")[2]
    assert await SessionStore(pool).account_of(token) == "acct-9"
    row = await pool.fetchrow("SELECT expires_at - issued_at AS ttl, issued_by"
                              " FROM customer_sessions WHERE token_digest = $1",
                              token_digest(token))
    assert row["ttl"].total_seconds() == 60 and row["issued_by"] == "cli"

    code, out, err = await cli(settings, "accounts", "portal-link", "acct-9",
                               RATING_PUBLIC_URL="https://billing.example.com/")
    assert code == 0 and out.startswith("https://billing.example.com/billing?session="), err
    code, out, err = await cli(settings, "accounts", "portal-link", "nobody")
    assert code == 1 and out == "" and err.count("\n") == 1 and "nobody" in err
    code, out, err = await cli(settings, "accounts", "portal-link", "acct-9", "--ttl", "0")
    assert code == 1 and err.startswith("rating-engine: error: --ttl")


async def test_cli_writes_are_in_the_audit_trail(settings: Settings) -> None:
    await cli(settings, "accounts", "create", "acct-7", "--plan", "standard")
    await cli(settings, "accounts", "stt-billing", "acct-7", "invoice")
    await cli(settings, "accounts", "adjust", "acct-7", "1.5", "--reason", "goodwill",
              "--idempotency-key", "k1")
    await cli(settings, "accounts", "adjust", "nobody", "1", "--reason", "x",
              "--idempotency-key", "k2")
    code, out, err = await cli(settings, "audit")
    assert code == 0, err
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["action"], r["account_id"], r["outcome"]) for r in rows] == [
        ("account.create", "acct-7", "ok"), ("stt_billing.set", "acct-7", "ok"),
        ("adjustment", "acct-7", "ok"), ("adjustment", "nobody", "refused unknown_account")]
    assert all(r["actor"].startswith("cli") for r in rows)
    assert rows[2]["detail"] == {"amount": "1.5", "reason": "goodwill",
                                 "idempotency_key": "k1"}
    code, out, _ = await cli(settings, "audit", "--account", "nobody")
    assert [orjson.loads(line)["action"] for line in out.splitlines()] == ["adjustment"]

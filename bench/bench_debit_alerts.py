"""What the notification thresholds (balance.alert) cost the usage debit statement.

Run ``python bench/bench_debit_alerts.py``: on an embedded PostgreSQL, 1 000 accounts,
batches of 10 000 events, EXPLAIN ANALYZE of the debit statement, first with no account
having notification thresholds, then with every account having two (both crossed
during the runs). Prints the time of the statement's ``alerted`` part
and of the whole statement (median of the runs). EXPLAIN ANALYZE's own timing inflates
both; the part's share is what matters.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.embedded import EmbeddedPostgres
from rating.core.rate import Charge
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import _STATEMENTS, DebitBatch, RatedUsage
from rating.stores.migrations import migrate

ACCOUNTS = 1_000
# The debit statement of a new batch, accounts named by key, no reservation settling.
_NEW_BY_KEY = _STATEMENTS[False, True, False]
BATCH = 10_000
RUNS = 5
OPENING = 1_000 * 1_000_000
_ids = itertools.count()


def batch(accounts: list[str], amount: int) -> DebitBatch:
    now = datetime.now(UTC)
    return DebitBatch.of([
        RatedUsage(Charge(f"e{next(_ids)}", "bench", random.choice(accounts), "call", "GB",
                          amount, "EUR", "standard"), now, False)
        for _ in range(BATCH)])


def node_time(plan: str, name: str) -> float:
    """The actual total time (ms) of the first plan node after ``CTE name``."""
    lines = plan.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"CTE {name}":
            actual = lines[i + 1].split("actual time=")[1]
            return float(actual.split("..")[1].split(" ")[0])
    raise RuntimeError(f"no CTE {name} in the plan")


async def measure(pool: asyncpg.Pool, accounts: list[str], amount: int) -> tuple[float, float]:
    part, total = [], []
    for _ in range(RUNS):
        debit = batch(accounts, amount)
        rows = await pool.fetch("EXPLAIN (ANALYZE, TIMING ON) " + _NEW_BY_KEY,
                                debit.rows_json, debit.account_ids)
        plan = "\n".join(r[0] for r in rows)
        part.append(node_time(plan, "alerted"))
        total.append(float(plan.rsplit("Execution Time: ", 1)[1].split(" ")[0]))
    return statistics.median(part), statistics.median(total)


async def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        async with EmbeddedPostgres(Path(work) / "pg") as pg:
            pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=2)
            try:
                async with pool.acquire() as conn:
                    await migrate(conn)
                accounts = [f"bench-{i:05d}" for i in range(ACCOUNTS)]
                await AccountStore(pool).create_many(
                    NewAccount(a, "standard", "EUR", balance=OPENING) for a in accounts)
                await pool.execute("ANALYZE accounts")
                part, total = await measure(pool, accounts, 1_000)
                print(f"no thresholds:      alerted part {part:.2f} ms of {total:.1f} ms"
                      f" ({part / total:.2%})")
                # Two thresholds each; each batch takes every account ~10 units lower, so
                # both are crossed by every account during the runs.
                await pool.execute(
                    "UPDATE accounts SET alert_thresholds = ARRAY[$1::bigint, $2::bigint]",
                    OPENING - 15_000_000, OPENING - 35_000_000)
                part, total = await measure(pool, accounts, 1_000_000)
                crossed = await pool.fetchval(
                    "SELECT count(*) FROM outbox WHERE type = 'balance.alert'")
                print(f"two thresholds:     alerted part {part:.2f} ms of {total:.1f} ms"
                      f" ({part / total:.2%}); {crossed} alerts announced in all")
            finally:
                await pool.close()


if __name__ == "__main__":
    asyncio.run(main())

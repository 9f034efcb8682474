"""Numbered SQL migrations applied in order, once, each under an advisory lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from rating.stores.db import Connection

log = logging.getLogger(__name__)

# Any constant shared by every engine: two engines starting at once queue on it.
_MIGRATION_LOCK_KEY = 0x7261_7469_6E67  # "rating"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("rating.stores").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return found


async def pending_migrations(conn: Connection) -> list[Migration]:
    """Migrations not yet recorded, read without taking a lock or changing anything: a
    role that may only read and write rows can ask (``SELECT`` on schema_migrations)."""
    recorded = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = set()
    if recorded:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in available_migrations() if m.version not in done]


async def migrate(conn: Connection) -> list[Migration]:
    """Apply every migration not yet recorded; return those applied now.

    Each migration is one transaction under a transaction-scoped advisory lock, so that
    two engines starting at once apply it once, and no lock outlives its transaction
    (pooled connections are handed back without a session reset: see ``create_pool``).
    """
    applied_now = []
    for migration in available_migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            if await conn.fetchval("SELECT true FROM schema_migrations WHERE version = $1",
                                   migration.version):
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version, migration.name)
        log.info("applied migration %04d_%s", migration.version, migration.name)
        applied_now.append(migration)
    return applied_now

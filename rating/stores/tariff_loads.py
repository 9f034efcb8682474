"""Which tariff files the running engines have in force (migration 0011).

Files are named by a digest of their names, sizes and modification times
(``rating.tariffbook.book.files_digest``): two processes that see the same files
compute the same digest.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class TariffLoad:
    instance: str
    in_force: str
    attempted: str


async def report_tariff_load(pool: asyncpg.Pool, instance: str, in_force: str,
                             attempted: str) -> None:
    """This engine's files in force and last tried, seen now."""
    await pool.execute(
        "INSERT INTO tariff_loads (instance, in_force, attempted) VALUES ($1, $2, $3)"
        " ON CONFLICT (instance) DO UPDATE SET in_force = $2, attempted = $3, seen_at = now()",
        instance, in_force, attempted)


async def live_tariff_loads(pool: asyncpg.Pool, within_s: float) -> list[TariffLoad]:
    """The engines that reported within the last ``within_s`` seconds."""
    rows = await pool.fetch(
        "SELECT instance, in_force, attempted FROM tariff_loads"
        " WHERE seen_at > now() - make_interval(secs => $1) ORDER BY instance", within_s)
    return [TariffLoad(r["instance"], r["in_force"], r["attempted"]) for r in rows]

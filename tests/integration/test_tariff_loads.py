"""Which tariff files the engines have in force, and `dlq replay` waiting for a fix."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg

from consumers.dlq_replay import wait_for_tariffs
from consumers.tariff_watcher import TariffWatcher
from rating.stores.tariff_loads import live_tariff_loads, report_tariff_load
from rating.tariffbook.book import TariffStore, files_digest, fingerprint
from tests.support import REPO


def copy_tariffs(to: Path) -> Path:
    return Path(shutil.copytree(REPO / "tests" / "fixtures" / "tariffs", to))


def test_digests_name_the_files_in_force_and_those_last_tried(tmp_path: Path) -> None:
    root = copy_tariffs(tmp_path / "a")
    store = TariffStore(root)
    first, tried = store.digests()
    assert first == tried == files_digest(root, fingerprint(root))
    # The same files under another name give the same digest (times kept by copy2).
    assert files_digest(tmp_path / "b", fingerprint(copy_tariffs(tmp_path / "b"))) == first
    sms = root / "rates" / "standard" / "sms.csv"
    sms.write_text(sms.read_text() + "not,a,rate,row\n")  # refused: the old book stays
    assert not store.reload().ok
    assert store.digests() == (first, files_digest(root, fingerprint(root))) != (first, first)
    sms.write_text(sms.read_text().replace("not,a,rate,row\n", "SN,0.0310\n"))
    os.utime(sms, ns=(1, 1))  # a new time for certain, however coarse the clock
    assert store.reload().ok
    assert store.digests()[0] == store.digests()[1] == files_digest(root, fingerprint(root))


async def test_the_watcher_reports_what_it_has_in_force(pool: asyncpg.Pool,
                                                        tmp_path: Path) -> None:
    root = copy_tariffs(tmp_path / "t")
    store = TariffStore(root)

    async def report(in_force: str, attempted: str) -> None:
        await report_tariff_load(pool, "host:1", in_force, attempted)

    async with TariffWatcher(store, 0.1, report=report):
        [load] = await live_tariff_loads(pool, 10)
        assert (load.in_force, load.attempted) == store.digests()
        sms = root / "rates" / "standard" / "sms.csv"
        sms.write_text(sms.read_text() + "SN,0.0310\n")
        os.utime(sms, ns=(1, 1))
        wanted = files_digest(root, fingerprint(root))
        for _ in range(50):
            [load] = await live_tariff_loads(pool, 10)
            if load.in_force == wanted:
                break
            await asyncio.sleep(0.1)
        assert load.in_force == load.attempted == wanted


async def test_replay_waits_for_every_live_engine_and_says_why_it_stops_waiting(
        pool: asyncpg.Pool) -> None:
    said: list[str] = []
    assert await wait_for_tariffs(pool, "new", 0.2, said.append) == "no_engine"
    await report_tariff_load(pool, "a:1", "new", "new")
    await report_tariff_load(pool, "b:2", "old", "old")

    async def b_catches_up() -> None:
        await asyncio.sleep(0.5)
        await report_tariff_load(pool, "b:2", "new", "new")

    catching_up = asyncio.create_task(b_catches_up())
    assert await wait_for_tariffs(pool, "new", 0.2, said.append) == "in_force"
    await catching_up
    assert len(said) == 1 and "waiting for the running engines" in said[0]
    await report_tariff_load(pool, "b:2", "new", "newer")  # it tried newer files, refused them
    assert await wait_for_tariffs(pool, "newer", 0.2, said.append) == "refused"
    assert "refused the tariff files" in said[-1]
    assert await wait_for_tariffs(pool, "newest", 0.2, said.append, timeout_s=0.3) == "timeout"
    assert "have not loaded the tariff files" in said[-1]
    # An engine that stopped reporting is gone: nobody is waited for.
    await pool.execute("UPDATE tariff_loads SET seen_at = now() - interval '1 hour'")
    assert await wait_for_tariffs(pool, "newest", 0.2, said.append) == "no_engine"

"""The watcher reloads on change and on SIGHUP, logs, and sets its metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from consumers.tariff_watcher import TariffWatcher
from rating.tariffbook.book import TariffStore

PLAN = """\
[plan]
id = "p"
currency = "EUR"
effective_from = "2026-01-01T00:00:00Z"

[services.sms]
rates = "sms.csv"
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture
def store(tmp_path: Path) -> TariffStore:
    write(tmp_path / "plans/p.toml", PLAN)
    write(tmp_path / "sms.csv", "country,rate\nFR,0.05\n")
    return TariffStore(tmp_path)


async def test_polling_reloads_and_bad_edit_is_reported(
    store: TariffStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumers.tariff_watcher")
    ok_before = metric("rating_tariff_reload_total", result="ok")
    error_before = metric("rating_tariff_reload_total", result="error")
    async with TariffWatcher(store, interval_s=0.02):
        first = store.book
        write(store.root / "sms.csv", "country,rate\nFR,0.06\n")
        await until(lambda: store.book is not first)
        assert metric("rating_tariff_reload_total", result="ok") == ok_before + 1
        assert metric("rating_tariff_last_reload_success") == 1
        assert metric("rating_tariff_last_reload_timestamp_seconds") > 0
        assert "tariffs reloaded: 1 plans" in caplog.text

        second = store.book
        write(store.root / "sms.csv", "country,rate\nFR,oops\n")
        await until(lambda: metric("rating_tariff_last_reload_success") == 0)
        assert metric("rating_tariff_reload_total", result="error") == error_before + 1
        assert store.book is second
        assert "sms.csv:2: bad decimal for rate: not a decimal amount: 'oops'" in caplog.text


async def test_a_reload_that_crashes_is_reported_like_an_invalid_file(
        store: TariffStore, monkeypatch: pytest.MonkeyPatch) -> None:
    error_before = metric("rating_tariff_reload_total", result="error")

    def crash(*_args: object) -> None:
        raise ValueError("a surprise in the loader")

    async with TariffWatcher(store, interval_s=0.02):
        assert metric("rating_tariff_last_reload_success") == 1
        monkeypatch.setattr(TariffStore, "reload", crash)
        write(store.root / "sms.csv", "country,rate\nFR,0.06\n")
        await until(lambda: metric("rating_tariff_last_reload_success") == 0)
    assert metric("rating_tariff_reload_total", result="error") > error_before


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_sighup_forces_a_reload(store: TariffStore) -> None:
    watcher = TariffWatcher(store, interval_s=60)
    await watcher.start()
    try:
        before = store.book
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: store.book is not before)
    finally:
        await watcher.close()


async def test_close_is_idempotent_and_final(store: TariffStore) -> None:
    watcher = TariffWatcher(store, interval_s=0.05)
    await watcher.start()
    await watcher.close()
    await watcher.close()
    with pytest.raises(RuntimeError):
        await watcher.start()
    with pytest.raises(ValueError):
        TariffWatcher(store, interval_s=0)

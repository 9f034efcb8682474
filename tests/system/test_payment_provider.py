"""`rating-engine run` and its payment provider: none configured, none started; the
simulation only when asked for, and then said at start-up and in a metric."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.embedded import free_port
from rating.settings import Settings
from tests.support import REPO, engine_env
from tests.system.test_engine_process import ENGINE, run_cli, start_engine, wait_for_log

pytestmark = pytest.mark.system


def test_run_without_a_payment_provider_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env["RATING_DATA_DIR"] = str(tmp_path / "data")
    started = time.monotonic()
    result = run_cli(env, "run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "RATING_PAYMENT_SIMULATION" in lines[0], result.stderr
    # Refused before anything started: no embedded server was created.
    assert not (tmp_path / "data").exists()
    assert time.monotonic() - started < 30


def _provider_info(port: int) -> dict[tuple[str, str], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {(s.labels["provider"], s.labels["mode"]): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples if s.name == "rating_payment_provider_info"}


async def test_the_simulation_is_used_only_when_set_and_then_it_says_so(
        settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "engine.log"
    env = engine_env(replace(settings, metrics_port=port),
                     RATING_PAYMENT_SIMULATION="decline")
    engine = start_engine(env, log)
    try:
        await wait_for_log(log, "rating engine running", engine)
        assert "payments       SIMULATED (decline): no real card is charged" in log.read_text()
        assert _provider_info(port) == {("simulated", "decline"): 1.0}
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(60) == 0, log.read_text()[-3000:]


def test_bad_simulation_specs_fail_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update({"RATING_DATA_DIR": str(tmp_path / "data"),
                "RATING_PAYMENT_SIMULATION": "always"})
    result = subprocess.run([*ENGINE, "run"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("rating-engine: error: RATING_PAYMENT_SIMULATION:")
    assert "'always'" in line

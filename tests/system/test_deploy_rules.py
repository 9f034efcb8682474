"""The deploy/ artefacts: Prometheus rules pass promtool, and every metric they and the
Grafana dashboard name is one the engine exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "rating-engine.json"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"

# A metric-name-like token: the engine's own names, and recording-rule names (with ':').
_ENGINE_NAME = re.compile(r"(?<![\w:.$-])rating_[a-z0-9_]+(?![\w:])")
_RECORDED_NAME = re.compile(r"(?<![\w:.$-])[a-z_]+:[a-z0-9_]+:[a-z0-9_]+(?![\w:])")
_RECORD_LINE = re.compile(r"^\s*-\s*record:\s*(\S+)\s*$", re.MULTILINE)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not on PATH (Debian/Ubuntu: apt-get install prometheus)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)


def exported_names() -> set[str]:
    """Every sample name the engine's metrics can expose (labelled or not yet used)."""
    import prometheus_client

    import api.http_metrics
    import api.reservations  # noqa: F401  (registers its metrics on import)
    import consumers.metrics
    import consumers.recharge_worker
    import consumers.reservation_sweeper
    import consumers.tariff_watcher  # noqa: F401  (registers its metrics on import)
    import engine.loop_lag  # noqa: F401  (registers its metrics on import)

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _dashboard_queries(node: object) -> Iterator[str]:
    """PromQL of every panel target and template variable of the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield from ([value] if isinstance(value, str) else _dashboard_queries(value))
            else:
                yield from _dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_queries(item)


def recorded_names() -> set[str]:
    return set(_RECORD_LINE.findall(RULES.read_text()))


# ---------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    result = _run(_promtool(), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts() -> None:
    result = _run(_promtool(), "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_loads_the_rules() -> None:
    result = _run(_promtool(), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_tests_cover_the_key_alerts() -> None:
    text = RULES_TEST.read_text()
    for alert in ("RatingConsumerStalled", "RatingTariffGapNoRate", "RatingTariffReloadFailing",
                  "RatingEngineDown", "RatingReservationsExpiringInBulk"):
        assert f"alertname: {alert}\n" in text, alert


# ---------------------------------------------------------------- metric names


def test_every_metric_in_the_rules_is_exported() -> None:
    text = RULES.read_text()
    used = set(_ENGINE_NAME.findall(text))
    assert used, "no rating_* metric found in rules.yaml"
    assert sorted(used - exported_names()) == []
    # Besides its own, the rules use Prometheus' `up` and the client's process metrics.
    if "process_start_time_seconds" in text:
        assert "process_start_time_seconds" in exported_names()


def test_every_recording_rule_used_is_defined() -> None:
    text = RULES.read_text()
    assert sorted(set(_RECORDED_NAME.findall(text)) - recorded_names()) == []


def test_every_alert_has_severity_and_runbook() -> None:
    blocks = re.split(r"^\s*-\s*alert:\s*", RULES.read_text(), flags=re.MULTILINE)[1:]
    assert len(blocks) >= 10
    for block in blocks:
        name = block.split("\n", 1)[0].strip()
        for needle in ("severity:", "summary:", "description:", "runbook:"):
            assert needle in block, f"{name}: no {needle}"
        assert re.search(r"severity:\s*(critical|warning)\b", block), name


def test_dashboard_is_valid_json_and_uses_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert "DS_PROMETHEUS" in {v["name"] for v in dashboard["templating"]["list"]}
    queries = list(_dashboard_queries(dashboard))
    used = {name for q in queries for name in _ENGINE_NAME.findall(q)}
    assert len(used) >= 15, sorted(used)
    assert sorted(used - exported_names()) == []
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]


def test_the_name_check_catches_a_misspelt_metric() -> None:
    used = set(_ENGINE_NAME.findall('rate(rating_events_aplied_total{job="x"}[5m])'))
    assert used == {"rating_events_aplied_total"}
    assert used - exported_names() == used
    assert "rating_events_applied_total" in exported_names()
    assert "rating_debit_transaction_seconds_bucket" in exported_names()
    assert "rating_consumer_lag_events" in exported_names()


# ---------------------------------------------------------------- kubernetes


def test_grace_period_outlasts_the_engine_shutdown_grace() -> None:
    config = (KUSTOMIZE_DIR / "configmap.yaml").read_text()
    deployment = (KUSTOMIZE_DIR / "deployment.yaml").read_text()
    grace = re.search(r'RATING_SHUTDOWN_GRACE_SECONDS:\s*"(\d+)"', config)
    period = re.search(r"terminationGracePeriodSeconds:\s*(\d+)", deployment)
    assert grace and period
    assert int(period.group(1)) > int(grace.group(1))


def test_kustomization_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: cannot render the kustomization")
    result = _run(kubectl, "kustomize", str(KUSTOMIZE_DIR))
    assert result.returncode == 0, result.stderr
    kinds = set(re.findall(r"^kind:\s*(\w+)", result.stdout, flags=re.MULTILINE))
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job"} <= kinds
    assert "kind: Secret" not in result.stdout  # real credentials are never applied from here

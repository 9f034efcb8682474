"""The batch-fed histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from consumers.metrics import BatchHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# On a bound (counted in its own bucket: le means <=), between bounds, past the last.
VALUES = [0.0, 0.005, 0.0050001, 0.01, 0.03, 0.05, 1, 1.5, 300, 301, 10_000, 0.2, 0.2]


def exposition(registry: CollectorRegistry) -> list[str]:
    """Every line but the sum (added in another order, it may differ in the last bit)."""
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if "_created" not in line and "_sum" not in line)


def test_matches_the_library_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("x_seconds", "Doc.", BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "Doc.", buckets=BUCKETS, registry=theirs)
    batched.observe_many(VALUES[:5])
    batched.observe_many(VALUES[5:])
    batched.observe_many([])
    for value in VALUES:
        reference.observe(value)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("x_seconds_sum") == pytest.approx(
        theirs.get_sample_value("x_seconds_sum"))


def test_sample_values() -> None:
    registry = CollectorRegistry()
    BatchHistogram("y_seconds", "Doc.", (0.1, 1), registry=registry).observe_many(
        [0.05, 0.1, 0.5, 2])
    assert registry.get_sample_value("y_seconds_bucket", {"le": "0.1"}) == 2
    assert registry.get_sample_value("y_seconds_bucket", {"le": "1.0"}) == 3
    assert registry.get_sample_value("y_seconds_bucket", {"le": "+Inf"}) == 4
    assert registry.get_sample_value("y_seconds_count") == 4
    assert registry.get_sample_value("y_seconds_sum") == pytest.approx(2.65)

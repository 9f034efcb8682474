"""Prometheus metrics of the engine (names per Prometheus conventions, base units)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class BatchHistogram(Collector):
    """A histogram fed a whole batch of values at once.

    ``Histogram.observe`` walks its buckets in Python and takes a lock for every
    value; at tens of thousands of events a second that was a few percent of the
    engine's CPU. Here a value costs one bisect, and a batch one lock.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = (*sorted(float(b) for b in buckets), float("inf"))
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()  # collect() runs on the metrics server's thread
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * len(bounds)
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # le: value <= bound
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        yield HistogramMetricFamily(
            self._name, self._documentation, sum_value=total,
            buckets=[("+Inf" if bound == float("inf") else repr(bound), cumulative)
                     for bound, cumulative in zip(self._bounds, accumulate(counts), strict=True)])


EVENTS_CONSUMED = Counter(
    "rating_events_consumed_total", "Usage events read from Kafka, by CloudEvents type.",
    ["type"])
EVENTS_APPLIED = Counter(
    "rating_events_applied_total", "Usage events rated and written to the ledger, by service.",
    ["service"])
EVENTS_DUPLICATE = Counter(
    "rating_events_duplicate_total", "Usage events already in the ledger (redeliveries).")
EVENTS_DLQ = Counter(
    "rating_events_dlq_total", "Usage events sent to the dead-letter topic, by error code.",
    ["reason"])
AMOUNT_DEBITED = Counter(
    "rating_debited_amount_total",
    "Money debited from credit (or accrued on invoices), in currency units.",
    ["service", "currency", "billing"])
BATCH_EVENTS = Histogram(
    "rating_batch_events", "Usage events per polled batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000))
DEBIT_SECONDS = Histogram(
    "rating_debit_transaction_seconds", "Duration of one batch's debit transaction.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
EVENT_TO_COMMIT_SECONDS = BatchHistogram(
    "rating_event_to_commit_seconds",
    "From a usage event's time to the commit of its debit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
CONSUMER_LAG = Gauge(
    "rating_consumer_lag_events", "Events in the partition not yet consumed.",
    ["topic", "partition"])
UNBILLED_BATCH_AGE = Gauge(
    "rating_unbilled_batch_age_seconds",
    "Seconds since the oldest usage batch this instance has read but not yet billed and "
    "acknowledged was read (0: none waiting). Grows while a dependency hangs.")
LAST_COMMIT_TIMESTAMP = Gauge(
    "rating_last_offset_commit_timestamp_seconds",
    "When this instance last committed usage offsets (Unix time).")
TRANSIENT_ERRORS = Counter(
    "rating_transient_errors_total",
    "Failures of a dependency that were retried (nothing skipped), by dependency.",
    ["dependency"])
OUTBOX_BACKLOG = Gauge(
    "rating_outbox_backlog_events", "Balance events written but not yet published.")
BALANCE_EVENTS_PUBLISHED = Counter(
    "rating_balance_events_published_total", "Balance events published, by type.", ["type"])
OFFSET_COMMIT_FAILURES = Counter(
    "rating_offset_commit_failures_total",
    "Offset commits refused (e.g. after a rebalance); the events are redelivered and "
    "deduplicated.")

# Nothing stalls: failures that are not outages, each isolated, counted and alerted on.
DEBIT_ISOLATIONS = Counter(
    "rating_debit_isolations_total",
    "Batches whose debit failed for a reason that is not an outage and were split to find "
    "the events to blame (those go to the DLQ, the rest is billed).")
DEBIT_SPLITS = Counter(
    "rating_debit_split_statements_total",
    "Debit statements run on parts of a batch while isolating the events to blame.")
COMPONENT_FAILURES = Counter(
    "rating_component_failures_total",
    "Failures of an engine component that were neither an outage nor one input's fault "
    "(a bug, a missing table, a privilege); the component resumes from where it had "
    "committed, after a growing delay.", ["component"])
DLQ_RESHAPED = Counter(
    "rating_dlq_reshaped_total",
    "Refused records published to the DLQ in a reduced form (null value, body or key "
    "truncated with its size and SHA-256, error header cut), by how.", ["how"])
DEAD_LETTERS_STORED = Counter(
    "rating_dead_letters_stored_total",
    "Refused records the DLQ would not take even reduced, kept in PostgreSQL "
    "(dead_letters table) instead.")
OUTBOX_ROW_FAILURES = Counter(
    "rating_outbox_row_failures_total",
    "Outbox rows the relay could not publish for a reason of their own; each is set aside "
    "and tried again later, the others are published meanwhile.")
OUTBOX_ROWS_SET_ASIDE = Gauge(
    "rating_outbox_rows_set_aside",
    "Unsent outbox rows set aside after failing to publish (tried again later).")
OUTBOX_PURGED = Counter(
    "rating_outbox_purged_total", "Sent outbox rows deleted after their retention.")
TOPUP_SETTLE_FAILURES = Counter(
    "rating_topup_settle_failures_total",
    "Attempts to settle a pending top-up that failed for a reason of their own; the row is "
    "marked and asked again later, the others are settled meanwhile.")
TOPUPS_FAILING = Gauge(
    "rating_topups_failing",
    "Unsettled top-ups whose last settling attempt failed (marked, asked again later).")

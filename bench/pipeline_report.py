"""The pipeline benchmark's results, its table and its verdicts against the targets."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from pipeline_common import DEBIT_BATCH, PLAN, USAGE_PARTITIONS

from rating.settings import Settings

# The bare UsageConsumer, (b) and (d).
TARGET_E2E_PER_S = 50_000
TARGET_RAW_RATIO = 0.5
TARGET_NAIVE_RATIO = 10.0
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 250.0
# The whole engine as users run it, (w1) and (w2).
TARGET_WHOLE_PER_S = 50_000
TARGET_WHOLE_RAW_RATIO = 0.8
TARGET_FIRST_COMMIT_S = 3.0
TARGET_WHOLE_P99_MS = 50.0


@dataclass
class Results:
    raw_debit: float = 0.0
    raw_fetch: float = 0.0
    publish: float = 0.0
    e2e: dict[str, Any] = field(default_factory=dict)
    naive: float = 0.0
    latency: dict[str, Any] = field(default_factory=dict)
    offered: float = 0.0
    server: str = ""
    cpu: dict[str, float] = field(default_factory=dict)
    fetch_latency: dict[str, float] = field(default_factory=dict)
    wal_segments_created: int = 0
    whole: dict[str, Any] = field(default_factory=dict)
    whole_cpu: dict[str, float] = field(default_factory=dict)
    whole_latency: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:>11.1f} ms"


def _per_event(cpu: dict[str, float], events: int, engine_note: str) -> list[tuple[str, str]]:
    return [(f"       CPU per event: {name}" + (engine_note if name == "engine" else ""),
             f"{seconds / events * 1e6:>11.1f} us") for name, seconds in cpu.items()]


def _bare_rows(args: argparse.Namespace, r: Results, e2e_rate: float) -> list[tuple[str, str]]:
    debit_share = r.e2e["debit_s"] / r.e2e["busy_s"]
    mean_batch = r.e2e["events"] / max(1, r.e2e["batches"])
    rss_mb = max(r.e2e["hwm_kb"], r.latency["hwm_kb"]) / 1024
    return [
        (f"(b)  end to end: UsageConsumer alone, {r.e2e['events']:,} events",
         f"{e2e_rate:>11,.0f} ev/s"),
        ("       time in the debit transaction", f"{debit_share:>11.0%}"),
        ("       mean events per batch", f"{mean_batch:>11,.0f}"),
        ("       consumer start-up before first batch (excluded)",
         f"{r.e2e['startup_s']:>11.1f} s"),
        *_per_event(r.cpu, r.e2e["events"], " (incl. start-up)"),
        (f"(c)  naive: one transaction per event, {args.naive_events:,} events",
         f"{r.naive:>11,.0f} ev/s"),
        ("     (b) / raw batched debit", f"{e2e_rate / r.raw_debit:>11.3f} x"),
        ("     (b) / naive", f"{e2e_rate / r.naive:>11.1f} x"),
        (f"(d)  event time -> commit at {r.offered:,.0f} ev/s offered, p50",
         _ms(r.latency["p50"])),
        (f"       p99 ({r.latency['latency_n']:,} events)", _ms(r.latency["p99"])),
        ("       max", _ms(r.latency["max"])),
        ("       of which in the engine (fetch returned -> offset committed), p50",
         _ms(r.latency["held_p50"])),
        ("       of which in the engine, p99", _ms(r.latency["held_p99"])),
        ("       WAL segment files created during the run", f"{r.wal_segments_created:>11,}"),
        ("(d0) same load, bare aiokafka consumer (no database), p50",
         _ms(r.fetch_latency["p50"])),
        (f"       p99 ({r.fetch_latency['n']:,} events)", _ms(r.fetch_latency["p99"])),
        ("       of which the broker's acknowledgement of the send, p50",
         _ms(r.fetch_latency["ack_p50"])),
        ("       of which the broker's acknowledgement, p99", _ms(r.fetch_latency["ack_p99"])),
        ("(e)  peak RSS (VmHWM), max of (b) and (d)", f"{rss_mb:>11.0f} MB"),
    ]


def _whole_rows(r: Results) -> list[tuple[str, str]]:
    w, wl = r.whole, r.whole_latency
    return [
        (f"(w1) rating-engine run, whole process, {w['events']:,} events",
         f"{w['events_per_s']:>11,.0f} ev/s"),
        ("       / raw batched debit", f"{w['events_per_s'] / r.raw_debit:>11.3f} x"),
        *([("       / (b) the UsageConsumer alone",
            f"{w['events_per_s'] / (r.e2e['events'] / r.e2e['busy_s']):>11.3f} x")]
          if r.e2e else []),
        ("       process start -> first committed offset", f"{w['first_commit_s']:>11.2f} s"),
        *_per_event(r.whole_cpu, w["events"], " (whole process, incl. start-up)"),
        (f"(w2) event time -> commit seen, {wl['offered']:,.0f} ev/s offered, p50",
         _ms(wl["p50"])),
        (f"       p99 ({wl['n']:,} events; offsets polled every 5 ms)", _ms(wl["p99"])),
        ("       max", _ms(wl["max"])),
        ("       peak RSS (VmHWM) of the whole process",
         f"{max(w['hwm_kb'], wl['hwm_kb']) / 1024:>11.0f} MB"),
    ]


def _whole_targets(args: argparse.Namespace, r: Results) -> list[tuple[str, bool]]:
    whole_rate = r.whole["events_per_s"]
    return [
        (f"(w1) whole engine >= {TARGET_WHOLE_PER_S:,} ev/s", whole_rate >= TARGET_WHOLE_PER_S),
        (f"(w1) whole engine >= {TARGET_WHOLE_RAW_RATIO} x raw batched debit",
         whole_rate / r.raw_debit >= TARGET_WHOLE_RAW_RATIO),
        (f"(w1) first commit <= {TARGET_FIRST_COMMIT_S:.0f} s after start",
         r.whole["first_commit_s"] <= TARGET_FIRST_COMMIT_S),
        (f"(w2) whole engine p99 <= {TARGET_WHOLE_P99_MS:.0f} ms at {args.rate:,.0f} ev/s",
         r.whole_latency["p99"] * 1000 <= TARGET_WHOLE_P99_MS),
    ]


def _print(args: argparse.Namespace, r: Results, rows: list[tuple[str, str]],
           targets: list[tuple[str, bool]]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    print(f"\nrating pipeline benchmark: {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {r.server},")
    tuning = Settings.from_env(os.environ)
    print(f"  {args.accounts:,} accounts on plan {PLAN!r}, {USAGE_PARTITIONS} partitions, "
          f"batch size {tuning.batch_max_events:,}, "
          f"fetch wait {tuning.fetch_max_wait_ms} ms")
    print("-" * (width + 16))
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    print("-" * (width + 16))
    for label, ok in targets:
        print(f"{label:<{width}}{verdict(ok):>11}")


def report_whole(args: argparse.Namespace, r: Results) -> None:
    """``--whole-only``: (a1), (w1) and (w2)."""
    rows = [(f"(a1) raw batched debit: apply_usage, {DEBIT_BATCH:,} events/tx",
             f"{r.raw_debit:>11,.0f} ev/s"), *_whole_rows(r)]
    _print(args, r, rows, _whole_targets(args, r))


def report(args: argparse.Namespace, r: Results) -> None:
    e2e_rate = r.e2e["events"] / r.e2e["busy_s"]
    rss_mb = max(r.e2e["hwm_kb"], r.latency["hwm_kb"]) / 1024
    p99_ms = r.latency["p99"] * 1000
    rows = [
        (f"(a1) raw batched debit: apply_usage, {DEBIT_BATCH:,} events/tx",
         f"{r.raw_debit:>11,.0f} ev/s"),
        ("(a2) raw Kafka fetch: aiokafka consumer", f"{r.raw_fetch:>11,.0f} msg/s"),
        *_bare_rows(args, r, e2e_rate),
        *_whole_rows(r),
    ]
    targets = [
        (f"(b) >= {TARGET_E2E_PER_S:,} ev/s", e2e_rate >= TARGET_E2E_PER_S),
        (f"(b) >= {TARGET_RAW_RATIO} x raw batched debit",
         e2e_rate / r.raw_debit >= TARGET_RAW_RATIO),
        (f"(b) >= {TARGET_NAIVE_RATIO:.0f} x naive", e2e_rate / r.naive >= TARGET_NAIVE_RATIO),
        (f"(d) p99 <= {TARGET_P99_MS:.0f} ms at {args.rate:,.0f} ev/s",
         p99_ms <= TARGET_P99_MS),
        (f"(e) RSS <= {TARGET_RSS_MB:.0f} MB", rss_mb <= TARGET_RSS_MB),
        *_whole_targets(args, r),
    ]
    _print(args, r, rows, targets)
    print(f"\n  (publish of the end-to-end events: {r.publish:,.0f} msg/s, librdkafka)")

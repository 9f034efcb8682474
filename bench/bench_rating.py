"""Rating throughput and tariff load time on a 100 000-prefix call deck.

Run ``python bench/bench_rating.py``: prints deck load time, events/s for rating
pre-decoded events and for decode + rate from bytes, and PASS/FAIL per target.
"""

from __future__ import annotations

import gc
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rating.core.errors import RatingError
from rating.core.events import (
    CallUsage,
    SmsUsage,
    SttUsage,
    TollFreeUsage,
    UsageEvent,
    decode_usage_event,
)
from rating.core.rate import rate
from rating.core.tariff import TariffBook
from rating.tariffbook.files import load_tariffs

PREFIXES = 100_000
EVENTS = 1_000_000
TARGET_RATE_PER_S = 300_000
TARGET_DECODE_RATE_PER_S = 300_000
TARGET_LOAD_S = 2.0
# (country, calling code) of the destinations; prefixes are spread over them.
COUNTRIES = [
    ("FR", "33"),
    ("DE", "49"),
    ("GB", "44"),
    ("ES", "34"),
    ("IT", "39"),
    ("NL", "31"),
    ("BE", "32"),
    ("CH", "41"),
    ("AT", "43"),
    ("PL", "48"),
    ("SE", "46"),
    ("PT", "351"),
    ("IE", "353"),
    ("US", "1"),
    ("CA", "1"),
    ("BR", "55"),
    ("MX", "52"),
    ("IN", "91"),
    ("JP", "81"),
    ("AU", "61"),
    ("ZA", "27"),
    ("NG", "234"),
    ("AE", "971"),
    ("SG", "65"),
]
PLAN = """\
[plan]
id = "bench"
currency = "EUR"
effective_from = "2026-01-01T00:00:00Z"

[services.call]
rates = "rates/call.csv"
increment = "60/60"
connect_fee = "0.00"

[services.tollfree]
rates = "rates/tollfree.csv"
increment = "60/60"

[services.sms]
rates = "rates/sms.csv"

[services.stt]
rate = "0.024"
increment = "15/15"
"""


def write_tariffs(root: Path, rnd: random.Random) -> list[str]:
    """A 100 000-prefix plan; returns the prefixes (destinations are drawn from them)."""
    (root / "plans").mkdir(parents=True)
    (root / "rates").mkdir()
    (root / "plans/bench.toml").write_text(PLAN)
    rows = ["country,prefix,rate,connect_fee,increment"]
    rows += [
        f"{country},,0.{rnd.randint(50, 900):04d},," for country, _ in COUNTRIES if country != "CA"
    ]
    prefixes: set[str] = set()
    while len(prefixes) < PREFIXES:
        country, code = rnd.choice(COUNTRIES)
        if country == "CA":
            continue
        prefix = code + str(rnd.randint(10**3, 10**6 - 1))[: rnd.randint(2, 6)]
        if prefix in prefixes:
            continue
        prefixes.add(prefix)
        own = rnd.random() < 0.05
        fee, inc = ("0.0100", "30/6") if own else ("", "")
        rows.append(f"{country},{prefix},0.{rnd.randint(50, 3000):04d},{fee},{inc}")
    (root / "rates/call.csv").write_text("\n".join(rows) + "\n")
    tollfree = ["country,direction,rate"]
    for country, _ in COUNTRIES:
        tollfree += [f"{country},inbound,0.0200", f"{country},outbound,0.0100"]
    (root / "rates/tollfree.csv").write_text("\n".join(tollfree) + "\n")
    sms = ["country,rate"] + [f"{country},0.0450" for country, _ in COUNTRIES]
    (root / "rates/sms.csv").write_text("\n".join(sms) + "\n")
    return sorted(prefixes)


def number(rnd: random.Random, prefix: str) -> str:
    """A distinct-looking E.164 number under ``prefix`` (11 or 12 digits in total)."""
    digits = prefix + str(rnd.randrange(10**10, 10**11))
    return "+" + digits[: max(len(prefix) + 1, 11 + rnd.randint(0, 1))]


def make_events(rnd: random.Random, prefixes: list[str]) -> list[UsageEvent]:
    """70 % call intervals, 15 % SMS, 10 % toll-free, 5 % STT."""
    events: list[UsageEvent] = []
    time_ = None
    country_numbers = [number(rnd, code + "6") for _, code in COUNTRIES if code != "1"]
    for n in range(EVENTS):
        roll = rnd.random()
        event_id, account = f"evt-{n}", f"acct-{n % 50_000}"
        if roll < 0.70:
            start = 60 * rnd.randint(0, 5)
            events.append(
                CallUsage(
                    event_id,
                    "sw-1",
                    account,
                    time_,
                    f"c-{n}",
                    number(rnd, rnd.choice(prefixes)),
                    start,
                    start + 60,
                )
            )
        elif roll < 0.85:
            events.append(
                SmsUsage(
                    event_id,
                    "sw-1",
                    account,
                    time_,
                    f"m-{n}",
                    rnd.choice(country_numbers),
                    rnd.randint(1, 3),
                )
            )
        elif roll < 0.95:
            events.append(
                TollFreeUsage(
                    event_id, "sw-1", account, time_, f"c-{n}", "+18005550100", "inbound", 0, 60
                )
            )
        else:
            events.append(SttUsage(event_id, "sw-1", account, time_, f"j-{n}", rnd.randint(1, 600)))
    return events


def encode(event: UsageEvent) -> bytes:
    data: dict[str, object]
    if isinstance(event, CallUsage):
        data = {
            "call_id": event.call_id,
            "destination": event.destination,
            "from_s": event.from_s,
            "to_s": event.to_s,
        }
    elif isinstance(event, SmsUsage):
        data = {
            "message_id": event.message_id,
            "destination": event.destination,
            "segments": event.segments,
        }
    elif isinstance(event, TollFreeUsage):
        data = {
            "call_id": event.call_id,
            "tollfree_number": event.tollfree_number,
            "direction": event.direction,
            "from_s": event.from_s,
            "to_s": event.to_s,
        }
    else:
        data = {"job_id": event.job_id, "seconds": event.seconds}
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event.event_id,
            "source": event.source,
            "type": f"usage.{event.service}",
            "time": "2026-11-25T10:00:00Z",
            "subject": event.account_id,
            "data": data,
        }
    )


def timed(label: str, count: int, work: Callable[[], int]) -> float:
    started = time.perf_counter()
    failures = work()
    elapsed = time.perf_counter() - started
    per_s = count / elapsed
    print(
        f"{label:<34} {count:>9,} events in {elapsed:6.2f} s = {per_s:>11,.0f} events/s"
        f"  ({failures} no-rate)"
    )
    return per_s


def rate_all(events: list[UsageEvent], book: TariffBook) -> int:
    failures = 0
    for event in events:
        try:
            rate(event, book, "bench")
        except RatingError:
            failures += 1
    return failures


def decode_rate_all(lines: list[bytes], book: TariffBook) -> int:
    failures = 0
    for line in lines:
        try:
            rate(decode_usage_event(line), book, "bench")
        except RatingError:
            failures += 1
    return failures


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    rnd = random.Random(20261125)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prefixes = write_tariffs(root, rnd)
        started = time.perf_counter()
        book = load_tariffs(root)
        load_s = time.perf_counter() - started
    print(f"deck load+validate: {PREFIXES:,} prefixes in {load_s:.2f} s")
    events = make_events(rnd, prefixes)
    lines = [encode(event) for event in events]
    # The inputs stand for a stream, not a heap: keep the collector from rescanning
    # 2 000 000 objects that a consumer would never hold at once.
    gc.freeze()
    rated = timed("rate (pre-decoded)", len(events), lambda: rate_all(events, book))
    decoded = timed("decode + rate (from bytes)", len(lines), lambda: decode_rate_all(lines, book))
    # The floor under decode + rate on this machine, for reading the figure above.
    timed(
        "orjson.loads alone", len(lines), lambda: sum(1 for line in lines if not orjson.loads(line))
    )
    results = [
        (f"deck load+validate < {TARGET_LOAD_S:.0f} s", load_s < TARGET_LOAD_S),
        (f"rate >= {TARGET_RATE_PER_S:,}/s", rated >= TARGET_RATE_PER_S),
        (f"decode + rate >= {TARGET_DECODE_RATE_PER_S:,}/s", decoded >= TARGET_DECODE_RATE_PER_S),
    ]
    for label, ok in results:
        print(f"{verdict(ok)}  {label}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

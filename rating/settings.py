"""The engine's settings: one frozen dataclass, validated once, built from ``RATING_*``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rating.core.currency import parse_presets
from rating.core.money import BALANCE_BOUND, DEFAULT_MAX_AMOUNT, format_amount, parse_amount
from rating.core.rate import MAX_BATCH_EVENTS
from rating.payments.simulated import SimulatedProvider

T = TypeVar("T")


class SettingsError(ValueError):
    """A bad configuration value; the message is one line naming the variable."""


def _shown(raw: str) -> str:
    """The value as a message quotes it: whole, or its start when it is long."""
    return repr(raw if len(raw) <= 60 else raw[:60] + "…")


def _digits(raw: str) -> int | None:
    """The value of ASCII digits (surrounding blanks allowed), else None: ``int()`` alone
    would also take ``8_080``, ``+8080`` and other scripts' digits."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    # Past 30 digits every value is as much too large as any (and int() of thousands of
    # digits raises): the bound's own message says so.
    return int(text) if len(text) <= 30 else 10**30


def _port(name: str, raw: str) -> int:
    port = _digits(raw)
    if port is None or not 0 <= port <= 65535:
        raise SettingsError(f"{name}: expected a port number 0-65535, got {_shown(raw)}")
    return port


def _positive_int(name: str, raw: str) -> int:
    value = _digits(raw)
    if value is None or value < 1:
        raise SettingsError(f"{name}: expected a positive integer, got {_shown(raw)}")
    return value


# Kafka's own limits (a partition count and a replication factor are int32 / int16).
MAX_TOPIC_PARTITIONS = 100_000
MAX_TOPIC_REPLICATION = 32_767


def _bounded(largest: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        value = _positive_int(name, raw)
        if value > largest:
            raise SettingsError(f"{name}: at most {largest}, got {_shown(raw)}")
        return value

    return parse


# The largest value that is still a setting rather than a typo; each also keeps its use
# within the limits of what receives it (a Kafka int32, a timer, a PostgreSQL interval).
MAX_FETCH_WAIT_MS = 10_000  # well below the client's 40 s request timeout
MAX_TARIFF_POLL_SECONDS = 86_400
MAX_SHUTDOWN_GRACE_SECONDS = 3_600
MAX_OUTBOX_RETENTION_HOURS = 87_600  # ten years


def _batch_size(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > MAX_BATCH_EVENTS:  # a batch's sum of charges must fit a bigint
        raise SettingsError(f"{name}: at most {MAX_BATCH_EVENTS} events, got {_shown(raw)}")
    return value


# Kafka's rule for topic names; a broker refuses any other at creation.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}", re.ASCII)


def _topic(name: str, raw: str) -> str:
    if not _TOPIC.fullmatch(raw) or raw in (".", ".."):
        raise SettingsError(f"{name}: expected a Kafka topic name (1 to 249 of A-Z a-z 0-9"
                            f" . _ -), got {_shown(raw)}")
    return raw


def _public_url(name: str, raw: str) -> str | None:
    value = raw.strip().rstrip("/")
    if not value:
        return None
    if not value.startswith(("http://", "https://")) or " " in value:
        raise SettingsError(f"{name}: expected http://HOST[:PORT] or https://…, got {_shown(raw)}")
    return value


def _presets(name: str, raw: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    try:
        return tuple(sorted(parse_presets(raw).items()))
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


# A grant or grace of more than a day is a typo, not a policy.
MAX_RESERVATION_SECONDS = 86_400


def _reservation_seconds(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > MAX_RESERVATION_SECONDS:
        raise SettingsError(f"{name}: at most {MAX_RESERVATION_SECONDS} seconds, got {_shown(raw)}")
    return value


def _grace_seconds(name: str, raw: str) -> int:
    if raw == "0":
        return 0
    return _reservation_seconds(name, raw)


def parse_bootstrap(name: str, raw: str) -> tuple[str, ...] | None:
    """``host:port[,host:port…]`` -> a tuple of ``host:port``; anything else is refused."""
    servers = []
    for part in raw.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or _digits(port) is None or not 0 < int(port) <= 65535:
            raise SettingsError(
                f"{name}: expected host:port[,host:port...], got {_shown(raw)}")
        servers.append(f"{host}:{port}")
    return tuple(servers)


_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?", re.ASCII)
_MAX_WAIT_S = 7 * 86_400
_MAX_RETRIES = 10


def _seconds(name: str, raw: str) -> float:
    """A positive number of seconds, at most a week."""
    text = raw.strip()
    if not _SECONDS.fullmatch(text) or not 0 < float(text) <= _MAX_WAIT_S:
        raise SettingsError(f"{name}: expected seconds, more than 0 and at most"
                            f" {_MAX_WAIT_S}, got {_shown(raw)}")
    return float(text)


def _retry_waits(name: str, raw: str) -> tuple[float, ...]:
    """``60,300,1800``: the wait before each retry of a declined recharge."""
    parts = [p.strip() for p in raw.split(",")]
    if not 1 <= len(parts) <= _MAX_RETRIES or not all(_SECONDS.fullmatch(p) for p in parts) \
            or not all(float(p) <= _MAX_WAIT_S for p in parts):
        raise SettingsError(
            f"{name}: expected 1 to {_MAX_RETRIES} comma-separated waits in seconds"
            f" (0 to {_MAX_WAIT_S} each), one per retry after a decline, e.g. 60,300,1800;"
            f" got {_shown(raw)}")
    return tuple(float(p) for p in parts)


def _database_url(name: str, raw: str) -> str | None:
    if not raw.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{name}: expected a postgresql:// URL, got {_shown(raw)}")
    return raw


def _max_amount(name: str, raw: str) -> int:
    expected = f"a decimal amount greater than 0 and at most {format_amount(BALANCE_BOUND)}"
    try:
        micros = parse_amount(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected {expected}, got {_shown(raw)}") from None
    if not 0 < micros <= BALANCE_BOUND:
        raise SettingsError(f"{name}: expected {expected}, got {_shown(raw)}")
    return micros


def _payment_simulation(name: str, raw: str) -> str | None:
    try:
        SimulatedProvider(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return raw.strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    database_url: str | None = None
    # Migrations may run as a role that owns the schema while the engine runs as one
    # that may only read and write rows (deploy/postgres/least-privilege.sql).
    migrate_database_url: str | None = None
    kafka_bootstrap: tuple[str, ...] | None = None
    data_dir: Path = Path(".rating")
    tariffs_dir: Path = Path("tariffs")
    metrics_port: int = 9108
    http_port: int = 8080
    http_host: str = "0.0.0.0"
    # Bearer tokens (CONTRACT §8): the operator may do everything; a voice switch may
    # authorize calls and reserve credit. Unset: that credential does not exist.
    api_token: str | None = None
    switch_token: str | None = None
    # Where customers reach the engine, for billing links (e.g. https://billing.example.com);
    # unset: the address the request came to (the CLI: http://127.0.0.1:HTTP_PORT).
    public_url: str | None = None
    usage_topic: str = "usage.events"
    dlq_topic: str = "usage.events.dlq"
    balance_topic: str = "balance.events"
    consumer_group: str = "rating-engine"
    recharge_group: str = "rating-engine-recharge"
    # Up to this many events per poll, debited in one transaction. Large batches pay
    # off when catching up: an account with several events in a batch is updated
    # once (10 000 rather than 2 000: ~17% more events/s in make bench); under a light
    # load a poll returns what has arrived, so batches stay small and latency low.
    batch_max_events: int = 10_000
    # How long the broker may hold a fetch open while waiting for new events. It bounds
    # the latency of a partition that has to wait for another partition's fetch to
    # return (aiokafka sends one fetch per broker at a time).
    fetch_max_wait_ms: int = 30
    tariff_poll_seconds: int = 2
    shutdown_grace_seconds: int = 25
    # The simulated card processor's spec ("succeed", "decline", "delay:SECONDS", ...);
    # None: no payment provider is configured, and ``run`` refuses to start.
    payment_simulation: str | None = None
    # The largest single amount a caller may give (top-up, recharge amount or threshold,
    # adjustment, opening balance), in micro-units.
    max_amount: int = DEFAULT_MAX_AMOUNT
    # Waits before the 2nd, 3rd, ... attempt of a declined automatic recharge; after the
    # last attempt declines, automatic recharge turns itself off (CONTRACT §12).
    recharge_retry_seconds: tuple[float, ...] = (60.0, 300.0, 1800.0)
    # How often the recharge sweeper looks for accounts left below their threshold.
    recharge_sweep_seconds: float = 5.0
    # The billing page's one-time amounts per currency (currency -> micro-units);
    # a currency not listed gets 10, 25, 50 and 100.
    topup_presets: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # Topics the engine creates when missing (existing ones are used as they are): the
    # usage and balance topics get this many partitions (the DLQ one, so its offsets
    # number its records), every topic this replication factor.
    topic_partitions: int = 8
    topic_replication: int = 1
    # Sent outbox rows (balance events already on Kafka) are deleted after this long.
    outbox_retention_hours: int = 168
    # Credit reservations (contract §10): the most seconds one grant adds, and how long
    # past what it granted a reservation stays open without an extension or usage.
    reservation_seconds: int = 300
    reservation_grace_seconds: int = 60

    def __post_init__(self) -> None:
        for name in ("usage_topic", "dlq_topic", "balance_topic", "consumer_group",
                     "recharge_group"):
            if not getattr(self, name):
                raise SettingsError(f"{name}: must not be empty")
        if not 1 <= self.batch_max_events <= MAX_BATCH_EVENTS:
            raise SettingsError(f"batch_max_events: must be 1..{MAX_BATCH_EVENTS}")
        if not self.recharge_retry_seconds or any(
                not 0 <= s <= _MAX_WAIT_S for s in self.recharge_retry_seconds):
            raise SettingsError(f"recharge_retry_seconds: 1 or more waits of 0..{_MAX_WAIT_S} s")
        if not 0 < self.recharge_sweep_seconds <= _MAX_WAIT_S:
            raise SettingsError(f"recharge_sweep_seconds: more than 0, at most {_MAX_WAIT_S}")
        if not 1 <= self.topic_partitions <= MAX_TOPIC_PARTITIONS:
            raise SettingsError(f"topic_partitions: must be 1..{MAX_TOPIC_PARTITIONS}")
        if not 1 <= self.topic_replication <= MAX_TOPIC_REPLICATION:
            raise SettingsError(f"topic_replication: must be 1..{MAX_TOPIC_REPLICATION}")
        if not 1 <= self.reservation_seconds <= MAX_RESERVATION_SECONDS:
            raise SettingsError(f"reservation_seconds: must be 1..{MAX_RESERVATION_SECONDS}")
        if not 0 <= self.reservation_grace_seconds <= MAX_RESERVATION_SECONDS:
            raise SettingsError(
                f"reservation_grace_seconds: must be 0..{MAX_RESERVATION_SECONDS}")
        if not 0 < self.max_amount <= BALANCE_BOUND:
            raise SettingsError(f"max_amount: must be 1..{BALANCE_BOUND} micro-units")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build from an environment mapping; the first bad value raises ``SettingsError``."""

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        def parsed(name: str, parse: Callable[[str, str], T], default: T) -> T:
            raw = get(name)
            return default if raw is None else parse(name, raw)

        def text(name: str, default: str) -> str:
            return get(name) or default

        defaults = cls()
        return cls(
            database_url=parsed("RATING_DATABASE_URL", _database_url, None),
            migrate_database_url=parsed("RATING_MIGRATE_DATABASE_URL", _database_url, None),
            kafka_bootstrap=parsed("RATING_KAFKA_BOOTSTRAP", parse_bootstrap, None),
            data_dir=Path(text("RATING_DATA_DIR", str(defaults.data_dir))),
            tariffs_dir=Path(text("RATING_TARIFFS_DIR", str(defaults.tariffs_dir))),
            metrics_port=parsed("RATING_METRICS_PORT", _port, defaults.metrics_port),
            http_port=parsed("RATING_HTTP_PORT", _port, defaults.http_port),
            http_host=text("RATING_HTTP_HOST", defaults.http_host),
            api_token=get("RATING_API_TOKEN"),
            switch_token=get("RATING_SWITCH_TOKEN"),
            public_url=parsed("RATING_PUBLIC_URL", _public_url, None),
            usage_topic=parsed("RATING_USAGE_TOPIC", _topic, defaults.usage_topic),
            dlq_topic=parsed("RATING_DLQ_TOPIC", _topic, defaults.dlq_topic),
            balance_topic=parsed("RATING_BALANCE_TOPIC", _topic, defaults.balance_topic),
            consumer_group=text("RATING_CONSUMER_GROUP", defaults.consumer_group),
            recharge_group=text("RATING_RECHARGE_GROUP", defaults.recharge_group),
            batch_max_events=parsed("RATING_BATCH_MAX_EVENTS", _batch_size,
                                    defaults.batch_max_events),
            fetch_max_wait_ms=parsed("RATING_FETCH_MAX_WAIT_MS", _bounded(MAX_FETCH_WAIT_MS),
                                     defaults.fetch_max_wait_ms),
            tariff_poll_seconds=parsed("RATING_TARIFF_POLL_SECONDS",
                                       _bounded(MAX_TARIFF_POLL_SECONDS),
                                       defaults.tariff_poll_seconds),
            shutdown_grace_seconds=parsed("RATING_SHUTDOWN_GRACE_SECONDS",
                                          _bounded(MAX_SHUTDOWN_GRACE_SECONDS),
                                          defaults.shutdown_grace_seconds),
            payment_simulation=parsed("RATING_PAYMENT_SIMULATION", _payment_simulation, None),
            max_amount=parsed("RATING_MAX_AMOUNT", _max_amount, defaults.max_amount),
            recharge_retry_seconds=parsed("RATING_RECHARGE_RETRY_SECONDS", _retry_waits,
                                          defaults.recharge_retry_seconds),
            recharge_sweep_seconds=parsed("RATING_RECHARGE_SWEEP_SECONDS", _seconds,
                                          defaults.recharge_sweep_seconds),
            topup_presets=parsed("RATING_TOPUP_PRESETS", _presets, defaults.topup_presets),
            topic_partitions=parsed("RATING_TOPIC_PARTITIONS", _bounded(MAX_TOPIC_PARTITIONS),
                                    defaults.topic_partitions),
            topic_replication=parsed("RATING_TOPIC_REPLICATION",
                                     _bounded(MAX_TOPIC_REPLICATION),
                                     defaults.topic_replication),
            outbox_retention_hours=parsed("RATING_OUTBOX_RETENTION_HOURS",
                                          _bounded(MAX_OUTBOX_RETENTION_HOURS),
                                          defaults.outbox_retention_hours),
            reservation_seconds=parsed("RATING_RESERVATION_SECONDS", _reservation_seconds,
                                       defaults.reservation_seconds),
            reservation_grace_seconds=parsed(
                "RATING_RESERVATION_GRACE_SECONDS", _grace_seconds,
                defaults.reservation_grace_seconds),
        )

"""The engine's backing services: the configured ones, or embedded ones started for us."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from engine.embedded import EmbeddedBroker, EmbeddedPostgres
from rating.core.errors import BrokerUnavailable, SchemaOutdated
from rating.settings import Settings, SettingsError
from rating.stores.migrations import migrate, pending_migrations

log = logging.getLogger(__name__)

# Kafka's TopicAlreadyExists: a topic someone else created is used as it is.
_TOPIC_ALREADY_EXISTS = 36
# INVALID_PARTITIONS and INVALID_REPLICATION_FACTOR: the setting to blame.
_TOPIC_SETTINGS = {37: "RATING_TOPIC_PARTITIONS", 38: "RATING_TOPIC_REPLICATION"}


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    kafka_bootstrap: str
    embedded_pids: tuple[int, ...]


def embedded_dir(settings: Settings, name: str) -> Path:
    """``RATING_DATA_DIR/name``, made if needed, for an embedded service; a path that
    cannot be a directory is one line naming the setting, before the service starts."""
    path = settings.data_dir / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"RATING_DATA_DIR: cannot keep the embedded services' files in"
                            f" {settings.data_dir}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"RATING_DATA_DIR: {path} is not writable")
    return path


@contextlib.asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[tuple[str, int | None]]:
    """The configured DSN, or an embedded server's (stopped on exit if we started it)."""
    if settings.database_url is not None:
        yield settings.database_url, None
        return
    async with EmbeddedPostgres(embedded_dir(settings, "postgres")) as pg:
        yield pg.dsn, pg.pid


@contextlib.asynccontextmanager
async def migrate_database_url(settings: Settings) -> AsyncIterator[tuple[str, int | None]]:
    """Where ``rating-engine migrate`` connects: RATING_MIGRATE_DATABASE_URL, else the
    engine's own database (configured or embedded)."""
    if settings.migrate_database_url is not None:
        yield settings.migrate_database_url, None
        return
    async with database_url(settings) as found:
        yield found


@contextlib.asynccontextmanager
async def kafka_bootstrap(settings: Settings) -> AsyncIterator[tuple[str, int | None]]:
    if settings.kafka_bootstrap is not None:
        yield ",".join(settings.kafka_bootstrap), None
        return
    async with EmbeddedBroker(embedded_dir(settings, "broker")) as broker:
        yield broker.bootstrap, broker.pid


async def existing_kafka_bootstrap(settings: Settings) -> str | None:
    """The configured brokers, or the embedded broker a running engine started; else None.

    For commands that read or add to what an engine holds: a broker started just for
    them would be empty (the embedded one keeps its topics in memory).
    """
    if settings.kafka_bootstrap is not None:
        return ",".join(settings.kafka_bootstrap)
    return await EmbeddedBroker(settings.data_dir / "broker").running_bootstrap()


@contextlib.asynccontextmanager
async def endpoints(settings: Settings) -> AsyncIterator[Endpoints]:
    async with database_url(settings) as (dsn, pg_pid), \
            kafka_bootstrap(settings) as (bootstrap, broker_pid):
        pids = tuple(pid for pid in (pg_pid, broker_pid) if pid is not None)
        yield Endpoints(dsn, bootstrap, pids)


async def migrate_database(pool: asyncpg.Pool) -> None:
    """Apply the migrations not applied yet; with none pending, change nothing.

    The engine may run as a role that can only read and write rows
    (deploy/postgres/grants.sql): it starts when the schema is up to date, and
    refuses to (``SchemaOutdated``, one line) when a migration it may not apply is pending.
    """
    async with pool.acquire() as conn:
        pending = await pending_migrations(conn)
        if not pending:
            return
        try:
            await migrate(conn)
        except asyncpg.InsufficientPrivilegeError as exc:
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
            raise SchemaOutdated(
                f"the database lacks migrations ({names}) that this role may not apply:"
                " run `rating-engine migrate` first (with RATING_MIGRATE_DATABASE_URL naming"
                " a role that owns the schema)") from exc


async def ensure_topics(bootstrap: str, topics: dict[str, int], *,
                        replication: int = 1) -> None:
    """Create missing topics (name -> partitions); existing ones are used as they are.

    A cluster that refuses the partition count or the replication factor fails with
    one line naming the setting (``RATING_TOPIC_PARTITIONS``, ``RATING_TOPIC_REPLICATION``).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    # aiokafka logs its own copy of a connection failure; ours says it in one line.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, parts, replication) for name, parts in topics.items()
                   if name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, message in response.topic_errors:
                setting = _TOPIC_SETTINGS.get(code)
                if setting is not None:
                    raise SettingsError(
                        f"{setting}: the broker refused to create topic {topic} with "
                        f"{topics[topic]} partitions and replication {replication}: "
                        f"{message or 'no reason given'}")
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise BrokerUnavailable(f"cannot create topic {topic}: {message}")
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    finally:
        quiet.setLevel(level)
        await admin.close()


@contextlib.asynccontextmanager
async def kafka_producer(bootstrap: str, *, max_request_size: int = 1_048_576,
                         ) -> AsyncIterator[AIOKafkaProducer]:
    # acks=all and no idempotence: the embedded broker has no idempotent producer,
    # and correctness never depends on it (the ledger deduplicates).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                request_timeout_ms=15_000, max_request_size=max_request_size)
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        yield producer
    finally:
        await producer.stop()

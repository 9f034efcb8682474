"""Dependency errors are classified once: an outage to wait out, an input's fault, or other."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
)

from consumers.retry import transient_dependency
from rating.core.errors import StoreUnavailable
from rating.stores.db import (
    BALANCE_BOUND_CONSTRAINT,
    error_kind,
    exceeds_balance_bound,
    is_connection_lost,
    is_transient,
)


@pytest.mark.parametrize(("exc", "kind"), [
    # A pooled connection the server dropped during a restart fails its next query so.
    (asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation "
                                            "is in progress"), "outage"),
    (asyncpg.exceptions.ProtocolError("unexpected message"), "outage"),
    (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
     "outage"),
    (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), "outage"),
    (asyncpg.exceptions.AdminShutdownError("terminating connection"), "outage"),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), "outage"),
    (asyncpg.exceptions.SerializationError("could not serialize"), "outage"),
    (ConnectionResetError(), "outage"),
    (TimeoutError(), "outage"),
    (StoreUnavailable("down"), "outage"),
    (asyncpg.exceptions.NumericValueOutOfRangeError("bigint out of range"), "input"),
    (asyncpg.exceptions.CheckViolationError("check"), "input"),
    (asyncpg.exceptions.ProgramLimitExceededError("index row too large"), "input"),
    (asyncpg.exceptions.UndefinedTableError("no such table"), "other"),
    (asyncpg.exceptions.InsufficientPrivilegeError("permission denied"), "other"),
    (asyncpg.exceptions.ClientConfigurationError("bad option"), "other"),
    (RuntimeError("a bug"), "other"),
])
def test_database_errors_are_classified_by_what_they_mean(exc: BaseException,
                                                          kind: str) -> None:
    assert error_kind(exc) == kind
    assert is_transient(exc) is (kind == "outage")


def test_the_connection_is_replaced_only_when_it_is_the_one_that_failed() -> None:
    assert is_connection_lost(asyncpg.exceptions.InternalClientError("state 12"))
    assert is_connection_lost(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert not is_connection_lost(asyncpg.exceptions.SerializationError("retry"))
    assert not is_connection_lost(asyncpg.exceptions.NumericValueOutOfRangeError("range"))


def test_the_balance_bound_is_recognised_by_constraint_or_overflow() -> None:
    check = asyncpg.exceptions.CheckViolationError("check")
    assert not exceeds_balance_bound(check)
    check.constraint_name = BALANCE_BOUND_CONSTRAINT  # type: ignore[attr-defined]
    assert exceeds_balance_bound(check)
    assert exceeds_balance_bound(asyncpg.exceptions.NumericValueOutOfRangeError("range"))
    assert not exceeds_balance_bound(RuntimeError("range"))


@pytest.mark.parametrize(("exc", "dependency"), [
    (KafkaConnectionError("down"), "kafka"),
    (KafkaTimeoutError(), "kafka"),  # a send that timed out while the broker was away
    (NotLeaderForPartitionError(), "kafka"),
    (MessageSizeTooLargeError("too large"), None),  # the record's fault: never retried as is
    (RecordTooLargeError(), None),
    (asyncpg.exceptions.InternalClientError("state 12"), "postgresql"),
    (asyncpg.exceptions.NumericValueOutOfRangeError("range"), None),
    (AssertionError("Need at least one: key or value"), None),
])
def test_transient_dependencies(exc: BaseException, dependency: str | None) -> None:
    assert transient_dependency(exc) == dependency

"""How retried failures are described in the logs."""

from __future__ import annotations

from consumers.retry import describe


def test_describe_never_leaves_the_reason_empty() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(ConnectionResetError("peer gone")) == "ConnectionResetError: peer gone"
    assert describe(RuntimeError("  ")) == "RuntimeError"

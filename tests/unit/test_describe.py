"""How failures are described in log lines (rating.core.errors.describe)."""

from __future__ import annotations

from rating.core.errors import describe


def test_describe_never_leaves_the_reason_empty() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(ConnectionResetError("peer gone")) == "ConnectionResetError: peer gone"
    assert describe(RuntimeError("  ")) == "RuntimeError"

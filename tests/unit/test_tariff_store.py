"""Hot reload: a good change swaps the book, a bad one keeps the old."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rating.core.errors import TariffError
from rating.tariffbook.book import TariffStore, fingerprint

PLAN = """\
[plan]
id = "p"
currency = "EUR"
effective_from = "2026-01-01T00:00:00Z"

[services.sms]
rates = "rates/sms.csv"
"""
AT = datetime(2026, 6, 1, tzinfo=UTC)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    # Some filesystems keep coarse mtimes: move it forward so every edit is seen.
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write(tmp_path / "plans/p.toml", PLAN)
    write(tmp_path / "rates/sms.csv", "country,rate\nFR,0.05\n")
    return tmp_path


def sms_rate(store: TariffStore) -> int:
    deck = store.book.plan("p", AT).sms
    assert deck is not None
    return deck.rates["FR"]


def test_initial_load_failure_raises(root: Path) -> None:
    write(root / "rates/sms.csv", "country,rate\nFR,x\n")
    with pytest.raises(TariffError):
        TariffStore(root)


def test_reload_swaps_book(root: Path) -> None:
    store = TariffStore(root)
    before = store.book
    assert sms_rate(store) == 50_000
    write(root / "rates/sms.csv", "country,rate\nFR,0.06\n")
    result = store.reload()
    assert (result.ok, result.changed, result.issues) == (True, True, [])
    assert store.book is not before
    assert sms_rate(store) == 60_000


def test_bad_change_keeps_old_book(root: Path) -> None:
    store = TariffStore(root)
    before = store.book
    write(root / "rates/sms.csv", "country,rate\nFR,-0.06\n")
    result = store.reload()
    assert (result.ok, result.changed) == (False, False)
    assert [str(issue) for issue in result.issues] == ["rates/sms.csv:2: negative rate '-0.06'"]
    assert store.book is before
    assert store.last_issues == result.issues
    # A fix is picked up by the next poll.
    write(root / "rates/sms.csv", "country,rate\nFR,0.07\n")
    fixed = store.reload_if_changed()
    assert fixed is not None and fixed.ok and fixed.changed
    assert sms_rate(store) == 70_000
    assert store.last_issues == []


def test_reload_if_changed_detects_edits_additions_and_removals(root: Path) -> None:
    store = TariffStore(root)
    assert store.reload_if_changed() is None
    assert store.reload_if_changed() is None
    write(root / "rates/sms.csv", "country,rate\nFR,0.05\nGB,0.04\n")
    assert store.reload_if_changed() is not None
    assert store.reload_if_changed() is None
    write(root / "plans/q.toml", PLAN.replace('"p"', '"q"'))
    result = store.reload_if_changed()
    assert result is not None and result.ok
    assert store.book.plan_ids() == ["p", "q"]
    (root / "plans/q.toml").unlink()
    assert store.reload_if_changed() is not None
    assert store.book.plan_ids() == ["p"]


def test_failed_state_is_not_retried_until_files_change(root: Path) -> None:
    store = TariffStore(root)
    write(root / "rates/sms.csv", "country,rate\nFR,bad\n")
    first = store.reload_if_changed()
    assert first is not None and not first.ok
    assert store.reload_if_changed() is None


def test_fingerprint_changes_with_content(root: Path) -> None:
    before = fingerprint(root)
    assert fingerprint(root) == before
    write(root / "rates/sms.csv", "country,rate\nFR,0.051\n")
    assert fingerprint(root) != before

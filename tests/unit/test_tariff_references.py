"""A tariff reload may not take away a plan, a version or a currency that accounts use."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rating.core.errors import TariffIssue
from rating.core.tariff import TariffBook
from rating.tariffbook.book import TariffStore
from rating.tariffbook.files import load_tariffs
from rating.tariffbook.references import dropped_references
from tests.support import REPO

FIXTURES = REPO / "tests" / "fixtures" / "tariffs"
NOW = datetime(2027, 3, 1, tzinfo=UTC)  # both versions of "standard" have been in force


@pytest.fixture
def tariffs(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES, tmp_path / "tariffs"))


def test_the_same_files_take_nothing_away(tariffs: Path) -> None:
    book = load_tariffs(tariffs)
    in_use = {"standard": {"EUR"}, "us-business": {"USD"}}
    assert dropped_references(book, book, in_use, NOW) == []


def test_dropping_a_plan_in_use_is_refused_and_one_unused_is_not(tariffs: Path) -> None:
    old = load_tariffs(tariffs)
    (tariffs / "plans" / "us-business.toml").unlink()
    new = load_tariffs(tariffs)
    issues = dropped_references(old, new, {"us-business": {"USD"}}, NOW)
    assert len(issues) == 1 and "'us-business' is removed" in issues[0].reason
    assert dropped_references(old, new, {"standard": {"EUR"}}, NOW) == []


def test_dropping_a_version_that_has_been_in_force_is_refused(tariffs: Path) -> None:
    old = load_tariffs(tariffs)
    (tariffs / "plans" / "standard-2027.toml").unlink()
    new = load_tariffs(tariffs)
    issues = dropped_references(old, new, {"standard": {"EUR"}}, NOW)
    assert len(issues) == 1 and "2027-01-01" in issues[0].reason
    # Before it took effect, it may still be withdrawn.
    before = datetime(2026, 12, 1, tzinfo=UTC)
    assert dropped_references(old, new, {"standard": {"EUR"}}, before) == []


def test_a_plan_whose_currency_changes_under_its_accounts_is_refused(tariffs: Path) -> None:
    old = load_tariffs(tariffs)
    plan = tariffs / "plans" / "us-business.toml"
    plan.write_text(plan.read_text().replace('currency = "USD"', 'currency = "EUR"'))
    issues = dropped_references(old, load_tariffs(tariffs), {"us-business": {"USD"}}, NOW)
    assert len(issues) == 1 and "accounts on it hold USD" in issues[0].reason


def test_a_refused_reload_keeps_the_book_in_force(tariffs: Path) -> None:
    store = TariffStore(tariffs)
    before = store.book
    (tariffs / "plans" / "us-business.toml").unlink()

    def guard(current: TariffBook, new: TariffBook) -> list[TariffIssue]:
        return dropped_references(current, new, {"us-business": {"USD"}}, NOW)

    result = store.reload(guard)
    assert not result.ok and not result.changed and store.book is before
    assert store.last_issues == result.issues
    assert store.reload_if_changed(guard) is None  # the same files are not tried again

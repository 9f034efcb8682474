"""Tariff files: every validation error as an exact ``file:line: reason``."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rating.core.errors import TariffError
from rating.core.pricing import Increment, TimedRate
from rating.tariffbook.files import load_tariffs, validate_tariffs

SHIPPED = Path(__file__).resolve().parents[2] / "tariffs"

PLAN = """\
[plan]
id = "p"
currency = "EUR"
effective_from = "2026-01-01T00:00:00Z"

[services.call]
rates = "rates/p/call.csv"
increment = "60/60"
connect_fee = "0.00"

[services.tollfree]
rates = "rates/p/tollfree.csv"
increment = "60/60"

[services.sms]
rates = "rates/p/sms.csv"

[services.stt]
rate = "0.024"
increment = "15/15"
"""
CALL = """\
country,prefix,rate,connect_fee,increment
FR,,0.0100,,
FR,336,0.0300,0.0500,30/6
GB,,0.0120,,
GB,447,0.0350,,
"""
TOLLFREE = "country,direction,rate\nUS,inbound,0.0150\nUS,outbound,0.0090\n"
SMS = "country,rate\nFR,0.0650\nGB,0.0400\n"


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write(tmp_path, "plans/p.toml", PLAN)
    write(tmp_path, "rates/p/call.csv", CALL)
    write(tmp_path, "rates/p/tollfree.csv", TOLLFREE)
    write(tmp_path, "rates/p/sms.csv", SMS)
    return tmp_path


def issues(root: Path) -> list[str]:
    return [str(issue) for issue in validate_tariffs(root)]


def test_valid_tree_loads(root: Path) -> None:
    assert issues(root) == []
    book = load_tariffs(root)
    version = book.plan("p", datetime(2026, 6, 1, tzinfo=UTC))
    assert (version.currency, version.effective_from) == ("EUR", datetime(2026, 1, 1, tzinfo=UTC))
    assert version.call is not None
    assert version.call.by_country["FR"] == TimedRate(10_000, 0, Increment(60, 60))
    assert version.call.by_prefix["336"] == ("FR", TimedRate(30_000, 50_000, Increment(30, 6)))
    assert version.stt == TimedRate(24_000, 0, Increment(15, 15))
    assert version.sms is not None and version.sms.rates == {"FR": 65_000, "GB": 40_000}


def test_shipped_tariffs_validate_clean() -> None:
    assert [str(issue) for issue in validate_tariffs(SHIPPED)] == []
    book = load_tariffs(SHIPPED)
    assert book.plan_ids() == ["standard", "us-business"]
    assert (book.currency("standard"), book.currency("us-business")) == ("EUR", "USD")
    assert len(book.versions("standard")) == 2


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'currency = "EUR"',
            'currency = "EURO"',
            "plans/p.toml:3: unknown currency 'EURO' (not an ISO 4217 code)",
        ),
        ('currency = "EUR"\n', "", "plans/p.toml:1: missing required key 'currency' in [plan]"),
        (
            'effective_from = "2026-01-01T00:00:00Z"',
            'effective_from = "2026-01-01T00:00:00"',
            "plans/p.toml:4: effective_from must be an RFC 3339 timestamp with offset, "
            "got '2026-01-01T00:00:00'",
        ),
        (
            'increment = "60/60"\nconnect',
            'increment = "60-60"\nconnect',
            "plans/p.toml:8: malformed increment '60-60', expected 'first/step' seconds "
            "(both >= 1)",
        ),
        (
            'increment = "15/15"',
            'increment = "0/15"',
            "plans/p.toml:20: increment first must be an integer >= 1, got 0 (both >= 1)",
        ),
        (
            'connect_fee = "0.00"',
            'connect_fee = "0,05"',
            "plans/p.toml:9: bad decimal for connect_fee: not a decimal amount: '0,05'",
        ),
        (
            'connect_fee = "0.00"',
            "connect_fee = 0.05",
            "plans/p.toml:9: connect_fee in [services.call] must be a string, got float 0.05",
        ),
        ('rate = "0.024"', 'rate = "-0.024"', "plans/p.toml:19: negative rate '-0.024'"),
        (
            'rates = "rates/p/call.csv"',
            'rates = "rates/p/calls.csv"',
            "plans/p.toml:7: rates file not found: rates/p/calls.csv",
        ),
        (
            'rates = "rates/p/call.csv"',
            'rates = "../call.csv"',
            "plans/p.toml:7: rates path escapes the tariffs directory: ../call.csv",
        ),
        (
            'rates = "rates/p/sms.csv"\n',
            "",
            "plans/p.toml:15: missing required key 'rates' in [services.sms]",
        ),
        (
            "[services.stt]",
            "[services.fax]\nrate = 1\n\n[services.stt]",
            "plans/p.toml:18: unknown service 'fax'",
        ),
        (
            'connect_fee = "0.00"',
            'conect_fee = "0.00"',
            "plans/p.toml:9: unknown key 'conect_fee' in [services.call]",
        ),
        ('id = "p"', 'id = "p q"', "plans/p.toml:2: invalid plan id 'p q'"),
        ('id = "p"', "id = 7", "plans/p.toml:2: id in [plan] must be a string, got int 7"),
        ("[plan]", "[plans]", "plans/p.toml:1: unknown key or table 'plans'"),
        ('currency = "EUR"', 'currency = "EUR', "plans/p.toml:3: invalid TOML: "),
    ],
)
def test_plan_file_issues(root: Path, old: str, new: str, expected: str) -> None:
    plan = root / "plans/p.toml"
    text = plan.read_text()
    assert old in text
    plan.write_text(text.replace(old, new, 1))
    found = issues(root)
    assert any(line.startswith(expected) for line in found), found
    with pytest.raises(TariffError) as caught:
        load_tariffs(root)
    assert [str(issue) for issue in caught.value.issues] == found


def test_missing_plan_table(root: Path) -> None:
    write(root, "plans/p.toml", PLAN.split("[services.call]")[0].replace("[plan]", "[other]"))
    found = issues(root)
    assert "plans/p.toml:1: missing required table [plan]" in found
    assert "plans/p.toml:1: missing required table [services]" in found


@pytest.mark.parametrize(
    ("rel", "line", "expected"),
    [
        ("rates/p/call.csv", "XX,,0.01,,", "rates/p/call.csv:6: unknown country code 'XX'"),
        ("rates/p/call.csv", "fr,,0.01,,", "rates/p/call.csv:6: unknown country code 'fr'"),
        (
            "rates/p/call.csv",
            "DE,,0.01.1,,",
            "rates/p/call.csv:6: bad decimal for rate: not a decimal amount: '0.01.1'",
        ),
        (
            "rates/p/call.csv",
            "DE,,1e-3,,",
            "rates/p/call.csv:6: bad decimal for rate: not a decimal amount: '1e-3'",
        ),
        (
            "rates/p/call.csv",
            "DE,,0.0000001,,",
            "rates/p/call.csv:6: bad decimal for rate: more than 6 decimals: '0.0000001'",
        ),
        ("rates/p/call.csv", "DE,,-0.01,,", "rates/p/call.csv:6: negative rate '-0.01'"),
        ("rates/p/call.csv", "DE,,0.01,-1,", "rates/p/call.csv:6: negative connect_fee '-1'"),
        (
            "rates/p/call.csv",
            "DE,,0.01,,60",
            "rates/p/call.csv:6: malformed increment '60', expected 'first/step' seconds "
            "(both >= 1)",
        ),
        (
            "rates/p/call.csv",
            "FR,336,0.02,,",
            "rates/p/call.csv:6: duplicate prefix '336' (first at line 3)",
        ),
        (
            "rates/p/call.csv",
            "GB,,0.02,,",
            "rates/p/call.csv:6: duplicate country row 'GB' (first at line 4)",
        ),
        (
            "rates/p/call.csv",
            "DE,49a,0.02,,",
            "rates/p/call.csv:6: prefix must be digits (at most 15): '49a'",
        ),
        (
            "rates/p/call.csv",
            "DE,+49,0.02,,",
            "rates/p/call.csv:6: prefix must be digits (at most 15): '+49'",
        ),
        (
            "rates/p/call.csv",
            "DE,44,0.02,,",
            "rates/p/call.csv:6: prefix '44' is outside DE's calling code +49",
        ),
        (
            "rates/p/call.csv",
            "DE,,0.02",
            "rates/p/call.csv:6: wrong column count: expected 5, got 3",
        ),
        (
            "rates/p/tollfree.csv",
            "US,sideways,0.01",
            "rates/p/tollfree.csv:4: unknown direction 'sideways' (inbound or outbound)",
        ),
        (
            "rates/p/tollfree.csv",
            "US,inbound,0.01",
            "rates/p/tollfree.csv:4: duplicate row US,inbound (first at line 2)",
        ),
        (
            "rates/p/tollfree.csv",
            "ZZ,inbound,0.01",
            "rates/p/tollfree.csv:4: unknown country code 'ZZ'",
        ),
        (
            "rates/p/sms.csv",
            "FR,0.07",
            "rates/p/sms.csv:4: duplicate country row 'FR' (first at line 2)",
        ),
        (
            "rates/p/sms.csv",
            "DE,abc",
            "rates/p/sms.csv:4: bad decimal for rate: not a decimal amount: 'abc'",
        ),
        (
            "rates/p/sms.csv",
            "DE,0.07,1",
            "rates/p/sms.csv:4: wrong column count: expected 2, got 3",
        ),
    ],
)
def test_csv_row_issues(root: Path, rel: str, line: str, expected: str) -> None:
    path = root / rel
    path.write_text(path.read_text() + line + "\n")
    assert issues(root) == [expected]


def test_shared_calling_codes_accept_prefixes_of_their_code(root: Path) -> None:
    path = root / "rates/p/call.csv"
    path.write_text(path.read_text() + "CA,1416,0.01,,\nGG,447781,0.05,,\nJE,441534,0.02,,\n")
    assert issues(root) == []


def test_comments_and_blank_lines_keep_line_numbers(root: Path) -> None:
    write(root, "rates/p/sms.csv", "# prices per segment\n\ncountry,rate\n\n# France\nFR,x\n")
    assert issues(root) == ["rates/p/sms.csv:6: bad decimal for rate: not a decimal amount: 'x'"]


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        (
            "rates/p/call.csv",
            "country,rate\nFR,0.01\n",
            "rates/p/call.csv:1: wrong header: expected "
            "'country,prefix,rate[,connect_fee][,increment]', got 'country,rate'",
        ),
        (
            "rates/p/call.csv",
            "# nothing\n",
            "rates/p/call.csv:1: header missing: expected "
            "'country,prefix,rate[,connect_fee][,increment]'",
        ),
        (
            "rates/p/sms.csv",
            "\n\nrate,country\n",
            "rates/p/sms.csv:3: wrong header: expected 'country,rate', got 'rate,country'",
        ),
        (
            "rates/p/tollfree.csv",
            "country,direction,rate,increment\n",
            "rates/p/tollfree.csv:1: wrong header: expected 'country,direction,rate', "
            "got 'country,direction,rate,increment'",
        ),
    ],
)
def test_header_issues(root: Path, rel: str, text: str, expected: str) -> None:
    write(root, rel, text)
    assert issues(root) == [expected]


def test_call_header_optional_columns(root: Path) -> None:
    write(root, "rates/p/call.csv", "country,prefix,rate\nFR,,0.01\nFR,33612,0.02\n")
    assert issues(root) == []
    write(root, "rates/p/call.csv", "country,prefix,rate,increment\nFR,,0.01,1/1\n")
    version = load_tariffs(root).plan("p", datetime(2026, 2, 1, tzinfo=UTC))
    assert version.call is not None
    assert version.call.by_country["FR"] == TimedRate(10_000, 0, Increment(1, 1))


def test_every_issue_is_listed(root: Path) -> None:
    path = root / "rates/p/call.csv"
    path.write_text(path.read_text() + "XX,,0.01,,\nDE,,bad,,\n")
    write(root, "rates/p/sms.csv", "country,rate\nFR,-1\n")
    assert issues(root) == [
        "rates/p/call.csv:6: unknown country code 'XX'",
        "rates/p/call.csv:7: bad decimal for rate: not a decimal amount: 'bad'",
        "rates/p/sms.csv:2: negative rate '-1'",
    ]


def test_plan_error_does_not_hide_its_rates_file_errors(tmp_path: Path) -> None:
    # Rows do not depend on the plan's defaults: one run lists the errors of both files.
    root = Path(shutil.copytree(SHIPPED, tmp_path / "tariffs"))
    call = root / "rates/standard/call.csv"
    call.write_text(call.read_text() + "XX,,0.01,,\nDE,4999,abc,,\nGB,,0.02,,\nFR,33a,0.02,,\n")
    plan = root / "plans/standard.toml"
    plan.write_text(plan.read_text().replace('increment = "60/60"', 'increment = "60/0"', 1))
    expected = [
        "plans/standard.toml:9: increment step must be an integer >= 1, got 0 (both >= 1)",
        "rates/standard/call.csv:94: unknown country code 'XX'",
        "rates/standard/call.csv:95: bad decimal for rate: not a decimal amount: 'abc'",
        "rates/standard/call.csv:96: duplicate country row 'GB' (first at line 4)",
        "rates/standard/call.csv:97: prefix must be digits (at most 15): '33a'",
    ]
    assert issues(root) == expected
    with pytest.raises(TariffError) as caught:
        load_tariffs(root)
    assert [str(issue) for issue in caught.value.issues] == expected


def test_plan_versions(root: Path) -> None:
    write(root, "plans/p-2027.toml", PLAN.replace("2026-01-01", "2027-01-01"))
    book = load_tariffs(root)
    assert [v.effective_from.year for v in book.versions("p")] == [2026, 2027]


def test_duplicate_version_and_currency_change(root: Path) -> None:
    write(root, "plans/q.toml", PLAN)
    write(root, "plans/r.toml", PLAN.replace("2026-01", "2027-01").replace('"EUR"', '"USD"'))
    assert issues(root) == [
        "plans/q.toml:4: duplicate version of plan 'p' effective 2026-01-01T00:00:00+00:00 "
        "(also in plans/p.toml)",
        "plans/r.toml:3: plan 'p' is in EUR in plans/p.toml; every version must keep one currency",
    ]


def test_missing_file_reported_at_each_plan_naming_it(root: Path) -> None:
    write(root, "plans/q.toml", PLAN.replace('id = "p"', 'id = "q"'))
    (root / "rates/p/sms.csv").unlink()
    assert issues(root) == [
        "plans/p.toml:16: rates file not found: rates/p/sms.csv",
        "plans/q.toml:16: rates file not found: rates/p/sms.csv",
    ]


def test_toml_native_datetime_is_accepted(root: Path) -> None:
    plan = root / "plans/p.toml"
    plan.write_text(plan.read_text().replace('"2026-01-01T00:00:00Z"', "2026-01-01T01:00:00+01:00"))
    assert load_tariffs(root).versions("p")[0].effective_from == datetime(2026, 1, 1, tzinfo=UTC)


def test_missing_directory_and_no_plans(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert issues(missing) == [f"{missing}:0: tariffs directory not found"]
    assert issues(tmp_path) == ["plans:0: no plan files (plans/*.toml)"]


def test_large_deck_loads(root: Path) -> None:
    # How fast is for `make bench-rating` (bench/bench_rating.py), not for a timed test.
    rows = [f"GB,44{n:07d},0.0{n % 90 + 10},," for n in range(100_000)]
    write(root, "rates/p/call.csv", CALL + "\n".join(rows) + "\n")
    book = load_tariffs(root)
    version = book.versions("p")[0]
    assert version.call is not None and len(version.call.by_prefix) == 100_002


def test_files_as_spreadsheets_and_editors_leave_them(root: Path) -> None:
    """A byte-order mark is dropped; bytes that are not UTF-8, an over-long field, a
    symlink loop and an absurd amount are each one issue at their own file and line."""
    (root / "plans" / "p.toml").write_bytes(b"\xef\xbb\xbf" + PLAN.encode())
    assert issues(root) == []
    (root / "rates" / "p" / "sms.csv").write_bytes(SMS.encode() + b"# caf\xe9\nDE,0.07\n")
    assert issues(root) == ["rates/p/sms.csv:4: not UTF-8 text (byte 0xe9); save the file"
                            " as UTF-8"]
    write(root, "rates/p/sms.csv", SMS)
    (root / "plans" / "p.toml").write_bytes(PLAN.encode().replace(b'"EUR"', b'"EUR" # \xe9'))
    assert issues(root) == ["plans/p.toml:3: not UTF-8 text (byte 0xe9); save the file"
                            " as UTF-8"]
    write(root, "plans/p.toml", PLAN)
    write(root, "rates/p/call.csv", CALL + "FR,3361," + "1" * 200_000 + ",,\n")
    [found] = issues(root)
    assert found.startswith("rates/p/call.csv:6: malformed CSV: field larger than field limit")
    write(root, "rates/p/call.csv", CALL)
    write(root, "rates/p/sms.csv", SMS + "DE," + "9" * 100_000 + "\n")
    assert issues(root) == ["rates/p/sms.csv:4: bad decimal for rate: amount too large:"
                            " 100000 digits before the point"]
    write(root, "rates/p/sms.csv", SMS)
    (root / "rates" / "p" / "loop.csv").symlink_to("loop.csv")
    write(root, "plans/p.toml", PLAN.replace("rates/p/sms.csv", "rates/p/loop.csv"))
    [found] = issues(root)
    assert found.startswith("plans/p.toml:") and "cannot read rates file rates/p/loop.csv" in found

"""``tariffs validate`` and ``rate``: exit codes and exact output lines."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from commands.tariffs import rate_command, validate_command

SHIPPED = Path(__file__).resolve().parents[2] / "tariffs"
DECK = Path(__file__).resolve().parents[1] / "fixtures" / "tariffs"  # the tests' own prices


def event(type_: str, data: dict[str, object], id_: str = "e-1", **extra: object) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": id_,
            "source": "sw",
            "type": type_,
            "subject": "acct",
            "time": "2026-11-25T10:00:00Z",
            "data": data,
            **extra,
        }
    )


def test_validate_ok() -> None:
    out = io.StringIO()
    assert validate_command(SHIPPED, out) == 0
    line = out.getvalue()
    assert line.startswith("ok: 2 plans, 3 versions, ")
    assert line.endswith(" call rates\n")


def test_validate_lists_issues(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "plans").mkdir(parents=True)
    (root / "plans/a.toml").write_text(
        '[plan]\nid = "a"\ncurrency = "XYZ"\neffective_from = "2026-01-01T00:00:00Z"\n'
        '[services.sms]\nrates = "sms.csv"\n'
    )
    out = io.StringIO()
    assert validate_command(root, out) == 1
    assert out.getvalue().splitlines() == [
        "plans/a.toml:3: unknown currency 'XYZ' (not an ISO 4217 code)",
        "plans/a.toml:6: rates file not found: sms.csv",
    ]


def test_validate_missing_dir(tmp_path: Path) -> None:
    out = io.StringIO()
    assert validate_command(tmp_path / "nope", out) == 1
    assert out.getvalue() == f"{tmp_path / 'nope'}:0: tariffs directory not found\n"


def run_rate(lines: list[bytes], plan: str = "standard") -> tuple[int, list[dict[str, object]]]:
    out = io.StringIO()
    code = rate_command(DECK, plan, io.BytesIO(b"\n".join(lines) + b"\n"), out)
    return code, [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_rate_command_outputs_one_line_per_event() -> None:
    code, rows = run_rate(
        [
            event(
                "usage.call",
                {"call_id": "c", "destination": "+33123456789", "from_s": 0, "to_s": 61},
            ),
            b"",
            b"   ",
            event(
                "usage.sms",
                {"message_id": "m", "destination": "+447700900123", "segments": 2},
                "e-2",
            ),
            event("usage.stt", {"job_id": "j", "seconds": 95}, "e-3"),
            event(
                "usage.tollfree",
                {
                    "call_id": "c",
                    "tollfree_number": "+18005550100",
                    "direction": "inbound",
                    "from_s": 0,
                    "to_s": 60,
                },
                "e-4",
            ),
        ]
    )
    assert code == 0
    # The fields of CONTRACT §7, then (additive) what priced each charge.
    plan = {"plan": "standard", "plan_version": "2026-01-01T00:00:00Z"}
    assert rows == [
        {"id": "e-1", "service": "call", "country": "FR", "amount": "0.020000", "currency": "EUR",
         **plan, "billed_seconds": 120, "rate": "0.010000", "connect_fee": "0.000000",
         "increment": "60/60", "prefix": None},
        {"id": "e-2", "service": "sms", "country": "GB", "amount": "0.080000", "currency": "EUR",
         **plan, "segments": 2, "rate": "0.040000"},
        {"id": "e-3", "service": "stt", "country": None, "amount": "0.042000", "currency": "EUR",
         **plan, "billed_seconds": 105, "rate": "0.024000", "connect_fee": "0.000000",
         "increment": "15/15"},
        {
            "id": "e-4",
            "service": "tollfree",
            "country": "US",
            "amount": "0.015000",
            "currency": "EUR",
            **plan, "billed_seconds": 60, "rate": "0.015000", "connect_fee": "0.000000",
            "increment": "60/60",
        },
    ]


def test_rate_command_answers_errors_and_keeps_going() -> None:
    code, rows = run_rate(
        [
            b"{not json",
            b"\xff\xfe garbage",
            event("usage.fax", {}, "e-2"),
            event(
                "usage.call", {"call_id": "c", "destination": "+3", "from_s": 0, "to_s": 1}, "e-3"
            ),
            event(
                "usage.call",
                {"call_id": "c", "destination": "+99912345", "from_s": 0, "to_s": 1},
                "e-4",
            ),
            event("usage.stt", {"job_id": "j", "seconds": 5}, "e-5"),
        ]
    )
    assert code == 0
    assert [(row["id"], row["error_code"]) for row in rows[:5]] == [
        (None, "invalid_json"),
        (None, "invalid_json"),
        ("e-2", "unknown_type"),
        ("e-3", "invalid_event"),
        ("e-4", "no_rate"),
    ]
    assert all(isinstance(row["error"], str) and row["error"] for row in rows[:5])
    assert rows[5]["amount"] == "0.006000"


def test_rate_command_unknown_plan_is_per_line() -> None:
    code, rows = run_rate([event("usage.stt", {"job_id": "j", "seconds": 5}),
                           event("usage.stt", {"job_id": "j", "seconds": 5}, "e-2")],
                          plan="gold")
    assert [row["error_code"] for row in rows] == ["unknown_plan", "unknown_plan"]
    assert code == 1  # every line failed


def test_rate_command_exit_status_says_whether_anything_was_priced() -> None:
    good = event("usage.stt", {"job_id": "j", "seconds": 5})
    assert run_rate([b"{not json", b"{nor this"])[0] == 1
    assert run_rate([b"{not json", good])[0] == 0
    assert run_rate([])[0] == 0  # nothing failed


def test_rate_command_reads_text_streams() -> None:
    out = io.StringIO()
    line = event("usage.stt", {"job_id": "j", "seconds": 60}).decode()
    assert rate_command(DECK, "us-business", io.StringIO(line + "\n"), out) == 0
    assert orjson.loads(out.getvalue())["currency"] == "USD"


@pytest.mark.parametrize("plan", ["standard", "us-business"])
def test_rate_command_fails_when_tariffs_do_not_load(tmp_path: Path, plan: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert rate_command(tmp_path, plan, io.BytesIO(b""), out, err) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == "plans:0: no plan files (plans/*.toml)\n"

"""The simulated switch honours balance events, and the status line suits its terminal."""

from __future__ import annotations

import io
import itertools
import logging

import orjson
import pytest

from demo.simulator import Destinations, TrafficGenerator
from demo.status_line import StatusLine
from demo.switch_gate import AccountGate

DESTINATIONS = Destinations(call=("+442071234567",), sms=("+447400123456",),
                            tollfree=("+448001234567",))


def balance_event(type_: str, account: str) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"{account}:1:{type_}", "type": type_,
                         "source": "rating-engine", "subject": account,
                         "data": {"account_id": account, "balance": "0.000000"}})


def test_the_gate_stops_an_account_from_exhausted_until_recovered() -> None:
    gate = AccountGate()
    gate.apply(balance_event("balance.low", "a"))
    assert gate.may_start("a")
    gate.apply(balance_event("balance.exhausted", "a"))
    assert not gate.may_start("a") and gate.may_start("b")
    gate.apply(balance_event("topup.credited", "a"))
    assert not gate.may_start("a")
    gate.apply(balance_event("balance.recovered", "a"))
    assert gate.may_start("a")
    for junk in (b"", b"not json", b"[]", b'{"type": "balance.exhausted"}', None):
        gate.apply(junk)
    assert gate.stopped == set()


def accounts_of(traffic: TrafficGenerator, n: int) -> list[str]:
    return [account for account, _ in itertools.islice(traffic, n)]


def test_no_new_usage_starts_for_a_stopped_account_but_calls_under_way_go_on() -> None:
    gate = AccountGate()
    traffic = TrafficGenerator(["a", "b"], DESTINATIONS, seed=7, gate=gate)
    assert set(accounts_of(traffic, 400)) == {"a", "b"}
    gate.apply(balance_event("balance.exhausted", "a"))
    # What "a" had under way (the rest of a call) may still come; nothing new does.
    under_way = list(traffic._pending)
    later = accounts_of(traffic, 400)
    assert later[:len(under_way)] == [account for account, _ in reversed(under_way)]
    assert set(later[len(under_way):]) == {"b"}
    gate.apply(balance_event("balance.exhausted", "b"))
    rest = accounts_of(traffic, 400)
    assert set(rest) <= {"b"} and len(rest) < 400  # then nothing at all
    assert accounts_of(traffic, 10) == []
    gate.apply(balance_event("balance.recovered", "a"))
    assert set(accounts_of(traffic, 50)) == {"a"}


@pytest.mark.parametrize("tty", [True, False])
def test_the_status_line_is_rewritten_on_a_terminal_and_plain_elsewhere(tty: bool) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    line = StatusLine(stream)
    line.show("1 events/s")
    line.show("2 events/s")
    assert line.filter(logging.makeLogRecord({"msg": "x"})) is True
    if tty:
        assert stream.getvalue() == "\r\x1b[K1 events/s\r\x1b[K2 events/s\r\x1b[K"
    else:
        assert stream.getvalue() == "1 events/s\n2 events/s\n"


@pytest.mark.parametrize("argv", [
    ["simulate", "--accounts", "0", "--duration", "1"],
    ["simulate", "--accounts", "-5"],
    ["dev", "--accounts", "0"],  # refused before any embedded service starts
    ["simulate", "--duration", "0"],
    ["simulate", "--duration", "-1"],
    ["simulate", "--rate", "nan"],
    ["dev", "--rate", "inf/s"],
    ["simulate", "--rate", "\u0665/s"],  # digits are ASCII digits
    ["dev", "--rate", "1_0"],
])
def test_a_bad_demo_option_is_one_line_before_anything_starts(
        argv: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from commands.main import main

    monkeypatch.setenv("RATING_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing to reach
    monkeypatch.setenv("RATING_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--{argv[1].lstrip('-')}" in err, err


@pytest.mark.parametrize("argv", [
    ["accounts", "auto-recharge", "acct-1", "--max-per-day", "\u0663"],
    ["accounts", "portal-link", "acct-1", "--ttl", "1_0"],
    ["simulate", "--duration", "\u0663"],
    ["simulate", "--accounts", "\uff15"],
    ["simulate", "--duration", "nan"],
])
def test_an_integer_option_is_ascii_digits(argv: list[str]) -> None:
    from commands.main import main

    with pytest.raises(SystemExit) as exited:  # argparse: usage and the error, exit 2
        main(argv)
    assert exited.value.code == 2

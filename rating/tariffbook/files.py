"""Loading and validating the billing team's tariff files (contract §4).

Every problem is collected as ``file:line: reason`` (paths relative to the
tariffs directory) so one run of ``tariffs validate`` lists them all; a book is
only built when there are none.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rating.core.errors import TariffError, TariffIssue
from rating.core.pricing import Increment, TimedRate
from rating.core.tariff import SERVICES, CallDeck, PlanVersion, SmsDeck, TariffBook, TollFreeDeck
from rating.tariffbook.csv_rates import (
    Named,
    TariffLoader,
    call_deck,
    decoded_text,
    sms_deck,
    tollfree_deck,
)

# Active ISO 4217 codes, kept in the module because the set changes a few times a
# decade and a dependency (babel, pycountry) for one lookup is not worth its size.
ISO_4217 = frozenset(
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL "
    "BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF "
    "DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF "
    "IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR "
    "LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO "
    "NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK "
    "SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH "
    "UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG "
    "ZWL".split()
)
_ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "plan": frozenset({"id", "currency", "effective_from", "name", "description"}),
    "call": frozenset({"rates", "increment", "connect_fee"}),
    "tollfree": frozenset({"rates", "increment", "connect_fee"}),
    "sms": frozenset({"rates"}),
    "stt": frozenset({"rate", "increment"}),
}
_PLAN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
_TOML_LINE_RE = re.compile(r"line (\d+)")
_TABLE_RE = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY_RE = re.compile(r"\s*([A-Za-z0-9_.\"' -]+?)\s*=")

_Deck = TypeVar("_Deck", CallDeck, TollFreeDeck, SmsDeck)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of each table header and key, e.g. ``("services", "call", "rates")``."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("#"):
            continue
        header = _TABLE_RE.match(line)
        if header is not None:
            table = tuple(part.strip().strip("\"'") for part in header.group(1).split("."))
            lines.setdefault(table, number)
            continue
        key = _KEY_RE.match(line)
        if key is not None:
            parts = tuple(part.strip().strip("\"'") for part in key.group(1).split("."))
            lines.setdefault(table + parts, number)
    return lines


@dataclass(frozen=True, slots=True)
class _Found:
    version: PlanVersion
    file: str
    effective_line: int
    currency_line: int


def _effective_from(value: object) -> datetime | None:
    """A tz-aware UTC datetime from a TOML datetime or an RFC 3339 string."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.upper())
        except ValueError:
            return None
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return None


class _PlanFile:
    """Reads one ``plans/*.toml`` file, reporting issues at the offending line."""

    def __init__(self, loader: TariffLoader, rel: str, text: str) -> None:
        self.loader, self.rel = loader, rel
        self.lines = _key_lines(text)
        self.ok = True

    def at(self, *keys: str) -> int:
        for end in range(len(keys), 0, -1):
            line = self.lines.get(keys[:end])
            if line is not None:
                return line
        return 1

    def issue(self, line: int, reason: str) -> None:
        self.ok = False
        self.loader.issue(self.rel, line, reason)

    def table(self, data: dict[str, Any], *keys: str) -> dict[str, Any] | None:
        value = data.get(keys[-1])
        name = ".".join(keys)
        if value is None:
            self.issue(self.at(*keys), f"missing required table [{name}]")
            return None
        if not isinstance(value, dict):
            self.issue(self.at(*keys), f"[{name}] must be a table")
            return None
        allowed = _ALLOWED_KEYS.get(keys[-1])
        for key in value:
            if allowed is not None and key not in allowed:
                self.issue(self.at(*keys, key), f"unknown key {key!r} in [{name}]")
        return value

    def string(self, table: dict[str, Any], *keys: str, default: str | None = None) -> str | None:
        value = table.get(keys[-1], default)
        name = ".".join(keys[:-1])
        if value is None:
            self.issue(self.at(*keys), f"missing required key {keys[-1]!r} in [{name}]")
            return None
        if not isinstance(value, str):
            # Floats would lose cents; every amount and path is a string.
            self.issue(
                self.at(*keys),
                f"{keys[-1]} in [{name}] must be a string, got {type(value).__name__} {value!r}",
            )
            return None
        return value

    def amount(self, table: dict[str, Any], *keys: str, default: str | None = None) -> int | None:
        text = self.string(table, *keys, default=default)
        if text is None:
            return None
        micros = self.loader.amount(text, keys[-1], self.rel, self.at(*keys))
        self.ok = self.ok and micros is not None
        return micros

    def increment(self, table: dict[str, Any], *keys: str) -> Increment | None:
        text = self.string(table, *keys)
        if text is None:
            return None
        inc = self.loader.increment(text, self.rel, self.at(*keys))
        self.ok = self.ok and inc is not None
        return inc


def _plan_toml(loader: TariffLoader, path: Path, rel: str
               ) -> tuple[str, dict[str, Any]] | None:
    """A plan file's text and TOML, or None with its issue at its line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        loader.issue(rel, 1, f"cannot read plan file: {exc.strerror or exc}")
        return None
    text = decoded_text(raw, rel, loader.issue)
    if text is None:
        return None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE_RE.search(str(exc))
        loader.issue(rel, int(match.group(1)) if match else 1, f"invalid TOML: {exc}")
        return None


def _read_plan(loader: TariffLoader, path: Path) -> _Found | None:
    rel = path.relative_to(loader.root).as_posix()
    read = _plan_toml(loader, path, rel)
    if read is None:
        return None
    text, data = read
    plan_file = _PlanFile(loader, rel, text)
    for key in data:
        if key not in ("plan", "services"):
            plan_file.issue(plan_file.at(key), f"unknown key or table {key!r}")
    header = plan_file.table(data, "plan") or {}
    plan_id = plan_file.string(header, "plan", "id")
    if plan_id is not None and _PLAN_ID_RE.fullmatch(plan_id) is None:
        plan_file.issue(plan_file.at("plan", "id"), f"invalid plan id {plan_id!r}")
    currency = plan_file.string(header, "plan", "currency")
    if currency is not None and currency not in ISO_4217:
        plan_file.issue(
            plan_file.at("plan", "currency"),
            f"unknown currency {currency!r} (not an ISO 4217 code)",
        )
    effective_from = None
    if "effective_from" not in header:
        plan_file.issue(plan_file.at("plan"), "missing required key 'effective_from' in [plan]")
    else:
        effective_from = _effective_from(header["effective_from"])
        if effective_from is None:
            plan_file.issue(
                plan_file.at("plan", "effective_from"),
                f"effective_from must be an RFC 3339 timestamp with offset, got "
                f"{header['effective_from']!r}",
            )
    services = plan_file.table(data, "services") or {}
    for name in services:
        if name not in SERVICES:
            plan_file.issue(plan_file.at("services", name), f"unknown service {name!r}")
    call = _timed_service(plan_file, services, "call", call_deck, loader.call_decks)
    tollfree = _timed_service(
        plan_file, services, "tollfree", tollfree_deck, loader.tollfree_decks
    )
    sms, stt = _sms_service(plan_file, services), _stt_service(plan_file, services)
    if not plan_file.ok or plan_id is None or currency is None or effective_from is None:
        return None
    version = PlanVersion(plan_id, currency, effective_from, call, tollfree, sms, stt)
    return _Found(
        version, rel, plan_file.at("plan", "effective_from"), plan_file.at("plan", "currency")
    )


_DeckBuilder = Callable[[TariffLoader, str, int, Increment, Named], _Deck | None]
_STAND_IN_INCREMENT = Increment(1, 1)  # for checking a rates file whose plan's is invalid


def _timed_service(
    plan_file: _PlanFile,
    services: dict[str, Any],
    name: str,
    build: _DeckBuilder[_Deck],
    cache: dict[tuple[object, ...], _Deck],
) -> _Deck | None:
    if name not in services or (table := plan_file.table(services, "services", name)) is None:
        return None
    rel = plan_file.string(table, "services", name, "rates")
    inc = plan_file.increment(table, "services", name, "increment")
    fee = plan_file.amount(table, "services", name, "connect_fee", default="0")
    if rel is None:
        return None
    named_at = (plan_file.rel, plan_file.at("services", name, "rates"))
    if inc is None or fee is None:
        # No row check needs the plan's defaults: check the file anyway so one run lists
        # its errors too, not only after the plan is fixed. The plan is already failed
        # (plan_file.ok), so the deck, built on stand-in defaults, is thrown away.
        build(plan_file.loader, rel, 0, _STAND_IN_INCREMENT, named_at)
        return None
    return _cached(
        plan_file, cache, (rel, fee, inc), lambda: build(plan_file.loader, rel, fee, inc, named_at)
    )


def _sms_service(plan_file: _PlanFile, services: dict[str, Any]) -> SmsDeck | None:
    if "sms" not in services or (table := plan_file.table(services, "services", "sms")) is None:
        return None
    rel = plan_file.string(table, "services", "sms", "rates")
    if rel is None:
        return None
    named_at = (plan_file.rel, plan_file.at("services", "sms", "rates"))
    return _cached(
        plan_file,
        plan_file.loader.sms_decks,
        (rel,),
        lambda: sms_deck(plan_file.loader, rel, named_at),
    )


def _stt_service(plan_file: _PlanFile, services: dict[str, Any]) -> TimedRate | None:
    if "stt" not in services or (table := plan_file.table(services, "services", "stt")) is None:
        return None
    rate = plan_file.amount(table, "services", "stt", "rate")
    inc = plan_file.increment(table, "services", "stt", "increment")
    if rate is None or inc is None:
        return None
    return plan_file.loader.timed(rate, 0, inc)


def _cached(
    plan_file: _PlanFile,
    cache: dict[tuple[object, ...], _Deck],
    key: tuple[object, ...],
    build: Callable[[], _Deck | None],
) -> _Deck | None:
    """Failures are not cached, so a missing file is reported at every line naming it."""
    deck = cache.get(key)
    if deck is None:
        deck = build()
        if deck is None:
            plan_file.ok = False
            return None
        cache[key] = deck
    return deck


def _collect(root: Path) -> tuple[TariffBook | None, list[TariffIssue]]:
    loader = TariffLoader(root)
    if not root.is_dir():
        return None, [TariffIssue(str(root), 0, "tariffs directory not found")]
    plans_dir = root / "plans"
    files = sorted(plans_dir.glob("*.toml")) if plans_dir.is_dir() else []
    if not files:
        loader.issue("plans", 0, "no plan files (plans/*.toml)")
    found = [plan for plan in (_read_plan(loader, path) for path in files) if plan is not None]
    first: dict[tuple[str, datetime], _Found] = {}
    currency_of: dict[str, _Found] = {}
    for plan in found:
        version = plan.version
        key = (version.plan_id, version.effective_from)
        if key in first:
            loader.issue(
                plan.file,
                plan.effective_line,
                f"duplicate version of plan {version.plan_id!r} effective "
                f"{version.effective_from.isoformat()} (also in {first[key].file})",
            )
        first.setdefault(key, plan)
        other = currency_of.setdefault(version.plan_id, plan)
        if other.version.currency != version.currency:
            loader.issue(
                plan.file,
                plan.currency_line,
                f"plan {version.plan_id!r} is in {other.version.currency} in "
                f"{other.file}; every version must keep one currency",
            )
    # A file shared by several plans is read once per plan when they fail: list its issues
    # once. Sorted by file, then line (stable, so one line's issues keep their order).
    issues = sorted(dict.fromkeys(loader.issues), key=lambda issue: (issue.file, issue.line))
    if issues:
        return None, issues
    return TariffBook([plan.version for plan in found]), []


def load_tariffs(root: Path) -> TariffBook:
    """Load every plan under ``root``, or raise ``TariffError`` listing every issue."""
    book, issues = _collect(root)
    if book is None:
        raise TariffError(issues)
    return book


def validate_tariffs(root: Path) -> list[TariffIssue]:
    """Every issue in the tariff files under ``root``; empty when they load."""
    return _collect(root)[1]

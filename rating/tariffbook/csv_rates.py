"""The rates files (CSV) that plan files name: one reader per service.

Each reader reports every problem of its file as ``file:line: reason`` on the shared
``TariffLoader`` and returns a deck only when the file has none.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from rating.core.countries import SUPPORTED_REGIONS
from rating.core.errors import TariffIssue
from rating.core.money import parse_amount
from rating.core.pricing import Increment, TimedRate
from rating.core.tariff import CallDeck, SmsDeck, TollFreeDeck

CALL_OPTIONAL = ("connect_fee", "increment")  # optional per-row columns of a call deck

# Shared calling codes (+1, +44, ...) are why prefixes are checked against the
# country's calling code only: a short prefix cannot say which NANP country it is.
_CALLING_CODE = {
    region: str(phonenumbers.country_code_for_region(region)) for region in SUPPORTED_REGIONS
}


Named = tuple[str, int]  # where the TOML file names a rates file: (file, line)
Issue = Callable[[str, int, str], None]


def decoded_text(raw: bytes, rel: str, issue: Issue) -> str | None:
    """``raw`` as UTF-8 text (a byte-order mark, as spreadsheets write, is dropped); bad
    bytes are one issue at their own line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        issue(rel, line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as"
                         " UTF-8")
        return None


def _guarded(reader: Any, rel: str, issue: Issue) -> Iterator[list[str]]:
    """The rows of a ``csv.reader``; a row it cannot read (a field past its size limit)
    ends the file with one issue at that row's line."""
    try:
        yield from reader
    except csv.Error as exc:
        issue(rel, reader.line_num or 1, f"malformed CSV: {exc}")


@dataclass
class TariffLoader:
    """What one load of a tariffs directory shares: the problems found so far, interned
    amounts and rates, and the decks already parsed."""

    root: Path
    issues: list[TariffIssue] = field(default_factory=list)
    amounts: dict[str, int] = field(default_factory=dict)
    rates: dict[tuple[int, int, Increment], TimedRate] = field(default_factory=dict)
    # Plan versions often share rates files: each (file, defaults) is parsed once.
    call_decks: dict[tuple[object, ...], CallDeck] = field(default_factory=dict)
    tollfree_decks: dict[tuple[object, ...], TollFreeDeck] = field(default_factory=dict)
    sms_decks: dict[tuple[object, ...], SmsDeck] = field(default_factory=dict)

    def issue(self, file: str, line: int, reason: str) -> None:
        self.issues.append(TariffIssue(file, line, reason))

    def amount(self, text: str, what: str, file: str, line: int) -> int | None:
        """Micro-units of a non-negative decimal cell, or ``None`` after an issue."""
        micros = self.amounts.get(text)
        if micros is None:
            try:
                micros = parse_amount(text)
            except ValueError as exc:
                self.issue(file, line, f"bad decimal for {what}: {exc}")
                return None
            self.amounts[text] = micros
        if micros < 0:
            self.issue(file, line, f"negative {what} {text!r}")
            return None
        return micros

    def increment(self, text: object, file: str, line: int) -> Increment | None:
        try:
            if not isinstance(text, str):
                raise ValueError(f"malformed increment {text!r}, expected 'first/step' seconds")
            return Increment.parse(text)
        except ValueError as exc:
            self.issue(file, line, f"{exc} (both >= 1)")
            return None

    def timed(self, rate: int, fee: int, inc: Increment) -> TimedRate:
        # 100 000 rows share a few dozen distinct prices: intern them.
        key = (rate, fee, inc)
        found = self.rates.get(key)
        if found is None:
            found = self.rates[key] = TimedRate(rate, fee, inc)
        return found

    def country(self, text: str, file: str, line: int) -> bool:
        if text in SUPPORTED_REGIONS:
            return True
        self.issue(file, line, f"unknown country code {text!r}")
        return False

    def csv_rows(
        self, rel: str, columns: tuple[str, ...], optional: tuple[str, ...], named_at: Named
    ) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
        """Header and ``(line, cells)`` rows of a rates file; ``None`` if unusable."""
        try:
            path = (self.root / rel).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            self.issue(*named_at, f"cannot read rates file {rel}: {exc}")
            return None
        if not path.is_relative_to(self.root.resolve()):
            self.issue(*named_at, f"rates path escapes the tariffs directory: {rel}")
            return None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.issue(*named_at, f"rates file not found: {rel}")
            return None
        except OSError as exc:
            self.issue(*named_at, f"cannot read rates file {rel}: {exc.strerror or exc}")
            return None
        text = decoded_text(raw, rel, self.issue)
        if text is None:
            return None
        expected = ",".join(columns) + "".join(f"[,{name}]" for name in optional)
        reader = csv.reader(text.splitlines())
        header: list[str] | None = None
        rows: list[tuple[int, list[str]]] = []
        for cells in _guarded(reader, rel, self.issue):
            if not cells or cells[0].lstrip().startswith("#") or not "".join(cells).strip():
                continue
            cells = [cell.strip() for cell in cells]
            if header is None:
                extra = cells[len(columns) :]
                if (
                    cells[: len(columns)] != list(columns)
                    or len(set(extra)) != len(extra)
                    or not set(extra) <= set(optional)
                ):
                    self.issue(
                        rel,
                        reader.line_num,
                        f"wrong header: expected {expected!r}, got {','.join(cells)!r}",
                    )
                    return None
                header = cells
                continue
            if len(cells) != len(header):
                self.issue(
                    rel,
                    reader.line_num,
                    f"wrong column count: expected {len(header)}, got {len(cells)}",
                )
                continue
            rows.append((reader.line_num, cells))
        if header is None:
            self.issue(rel, 1, f"header missing: expected {expected!r}")
            return None
        return header, rows


def call_deck(
    loader: TariffLoader, rel: str, fee: int, inc: Increment, named_at: Named
) -> CallDeck | None:
    parsed = loader.csv_rows(rel, ("country", "prefix", "rate"), CALL_OPTIONAL, named_at)
    if parsed is None:
        return None
    header, rows = parsed
    fee_col = header.index("connect_fee") if "connect_fee" in header else None
    inc_col = header.index("increment") if "increment" in header else None
    by_country: dict[str, TimedRate] = {}
    by_prefix: dict[str, tuple[str, TimedRate]] = {}
    seen: dict[str, int] = {}
    ok = True
    for line, cells in rows:
        country, prefix, rate_text = cells[0], cells[1], cells[2]
        good = loader.country(country, rel, line)
        if prefix and not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 15):
            loader.issue(rel, line, f"prefix must be digits (at most 15): {prefix!r}")
            good = False
        elif prefix and good and not prefix.startswith(_CALLING_CODE[country]):
            loader.issue(
                rel,
                line,
                f"prefix {prefix!r} is outside {country}'s calling code +{_CALLING_CODE[country]}",
            )
            good = False
        rate = loader.amount(rate_text, "rate", rel, line)
        row_fee: int | None = fee
        if fee_col is not None and cells[fee_col]:
            row_fee = loader.amount(cells[fee_col], "connect_fee", rel, line)
        row_inc: Increment | None = inc
        if inc_col is not None and cells[inc_col]:
            row_inc = loader.increment(cells[inc_col], rel, line)
        key = prefix or country
        if key in seen:
            kind = f"prefix {prefix!r}" if prefix else f"country row {country!r}"
            loader.issue(rel, line, f"duplicate {kind} (first at line {seen[key]})")
            good = False
        else:
            seen[key] = line
        if not good or rate is None or row_fee is None or row_inc is None:
            ok = False
            continue
        timed = loader.timed(rate, row_fee, row_inc)
        if prefix:
            by_prefix[prefix] = (country, timed)
        else:
            by_country[country] = timed
    return CallDeck(by_country, by_prefix) if ok else None


def tollfree_deck(
    loader: TariffLoader, rel: str, fee: int, inc: Increment, named_at: Named
) -> TollFreeDeck | None:
    parsed = loader.csv_rows(rel, ("country", "direction", "rate"), (), named_at)
    if parsed is None:
        return None
    rates: dict[tuple[str, str], TimedRate] = {}
    seen: dict[tuple[str, str], int] = {}
    ok = True
    for line, (country, direction, rate_text) in parsed[1]:
        good = loader.country(country, rel, line)
        if direction not in ("inbound", "outbound"):
            loader.issue(rel, line, f"unknown direction {direction!r} (inbound or outbound)")
            good = False
        rate = loader.amount(rate_text, "rate", rel, line)
        if (country, direction) in seen:
            loader.issue(
                rel,
                line,
                f"duplicate row {country},{direction} (first at line {seen[country, direction]})",
            )
            good = False
        else:
            seen[country, direction] = line
        if not good or rate is None:
            ok = False
            continue
        rates[country, direction] = loader.timed(rate, fee, inc)
    return TollFreeDeck(rates) if ok else None


def sms_deck(loader: TariffLoader, rel: str, named_at: Named) -> SmsDeck | None:
    parsed = loader.csv_rows(rel, ("country", "rate"), (), named_at)
    if parsed is None:
        return None
    rates: dict[str, int] = {}
    seen: dict[str, int] = {}
    ok = True
    for line, (country, rate_text) in parsed[1]:
        good = loader.country(country, rel, line)
        rate = loader.amount(rate_text, "rate", rel, line)
        if country in seen:
            loader.issue(
                rel, line, f"duplicate country row {country!r} (first at line {seen[country]})"
            )
            good = False
        else:
            seen[country] = line
        if not good or rate is None:
            ok = False
            continue
        rates[country] = rate
    return SmsDeck(rates) if ok else None

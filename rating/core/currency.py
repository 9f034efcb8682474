"""Amounts as customers read them: per-currency decimals, and the preset top-up amounts.

Shown amounts are exact: a currency's usual number of decimals at least, and every
further non-zero decimal the engine holds (``12.3456 EUR``), so that what a page
shows always equals what the API says. No grouping separators: the number reads
back as the same decimal.
"""

from __future__ import annotations

from collections.abc import Mapping

from rating.core.money import DECIMALS, DEFAULT_MAX_AMOUNT, MICRO, format_amount, parse_amount

# ISO 4217 minor units where they are not 2.
_MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}
DEFAULT_PRESETS = tuple(n * MICRO for n in (10, 25, 50, 100))
MAX_PRESETS = 8

Presets = Mapping[str, tuple[int, ...]]


def minor_units(currency: str) -> int:
    """How many decimals ``currency`` is usually written with."""
    return _MINOR_UNITS.get(currency.strip().upper(), 2)


def display_amount(micros: int, currency: str) -> str:
    """``12.3456`` for 12 345 600 micro-EUR; ``12.00`` for 12 EUR; ``1200`` for 1 200 JPY."""
    text = format_amount(micros)  # exactly six decimals
    whole, _, frac = text.partition(".")
    keep = max(minor_units(currency), len(frac.rstrip("0")))
    return f"{whole}.{frac[:keep]}" if keep else whole


def display_money(micros: int, currency: str) -> str:
    """The amount followed by its currency code: ``12.3456 EUR``."""
    return f"{display_amount(micros, currency)} {currency.strip()}"


def parse_presets(text: str, *, max_amount: int = DEFAULT_MAX_AMOUNT) -> dict[str, tuple[int, ...]]:
    """``EUR:10,25,50,100;JPY:1000,3000`` -> currency -> amounts in micro-units.

    Raises ``ValueError`` naming the problem: an unknown shape, a currency that is not
    three letters, an amount that is not a positive decimal at most ``max_amount`` in
    the currency's units (no fraction of a cent),
    more than ``MAX_PRESETS`` amounts, or a currency given twice.
    """
    presets: dict[str, tuple[int, ...]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        currency, sep, amounts = part.partition(":")
        currency = currency.strip().upper()
        if not sep or len(currency) != 3 or not currency.isascii() or not currency.isalpha():
            raise ValueError(f"expected CUR:AMOUNT,AMOUNT...[;CUR:...], got {part.strip()!r}")
        if currency in presets:
            raise ValueError(f"{currency} is given twice")
        values = []
        for raw in amounts.split(","):
            try:
                value = parse_amount(raw.strip())
            except ValueError as exc:
                raise ValueError(f"{currency}: {exc}") from None
            if not 0 < value <= max_amount:
                raise ValueError(f"{currency}: {raw.strip()!r} is not a positive amount"
                                 f" at most {format_amount(max_amount)}")
            if value % 10 ** (DECIMALS - minor_units(currency)):  # a card pays whole cents
                raise ValueError(f"{currency}: {raw.strip()!r} has more than"
                                 f" {minor_units(currency)} decimals")
            values.append(value)
        if len(values) > MAX_PRESETS:
            raise ValueError(f"{currency}: at most {MAX_PRESETS} amounts")
        presets[currency] = tuple(sorted(set(values)))
    return presets


def presets_for(currency: str, configured: Presets) -> tuple[int, ...]:
    return configured.get(currency.strip().upper(), DEFAULT_PRESETS)


__all__ = ["DEFAULT_PRESETS", "display_amount", "display_money", "minor_units",
           "parse_presets", "presets_for"]

"""Which amounts a caller may give, as a check and as the regular expression that says so.

A caller's amount (a top-up, a recharge amount or threshold, an adjustment, an opening
balance) is a decimal string of ``parse_amount``'s grammar whose value lies within a
rule: greater than zero, at least zero, or non-zero, and never more than the largest
single amount (``RATING_MAX_AMOUNT``) in size. ``AmountRule.pattern()`` is a regular
expression matching exactly those strings; the OpenAPI document carries it, so a
client generated from the document knows every bound the server enforces (a property
test holds the two to each other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rating.core.errors import InvalidRequest
from rating.core.money import BALANCE_BOUND, DECIMALS, MICRO, format_amount

AmountSign = Literal["positive", "non_negative", "non_zero", "signed"]
_SIGN_WORDS = {"positive": "greater than zero and at most {}",
               "non_negative": "zero or more and at most {}",
               "non_zero": "non-zero and at most {} in size", "signed": "at most {} in size"}


@dataclass(frozen=True, slots=True)
class AmountRule:
    """Amounts of one sign, at most ``maximum`` micro-units in size."""

    sign: AmountSign
    maximum: int

    def __post_init__(self) -> None:
        if not 0 < self.maximum <= BALANCE_BOUND:
            raise ValueError(f"maximum must be 1..{BALANCE_BOUND} micro-units")

    @property
    def description(self) -> str:
        return _SIGN_WORDS[self.sign].format(format_amount(self.maximum))

    def admits(self, micros: int) -> bool:
        if self.sign == "positive":
            return 0 < micros <= self.maximum
        if self.sign == "non_negative":
            return 0 <= micros <= self.maximum
        if self.sign == "non_zero":
            return micros != 0 and abs(micros) <= self.maximum
        return abs(micros) <= self.maximum

    def check(self, name: str, micros: int) -> int:
        """``micros`` if the rule admits it, else ``InvalidRequest`` (``invalid_amount``)."""
        if not self.admits(micros):
            raise InvalidRequest(f"{name}: must be {self.description}, got "
                                 f"{format_amount(micros)}", code="invalid_amount")
        return micros

    def pattern(self) -> str:
        """A regular expression (the same in Python and ECMA 262) matching exactly the
        decimal strings ``parse_amount`` reads whose value this rule admits."""
        positive = _positive(self.maximum)
        zero = f"-?0+(?:\\.0{{1,{DECIMALS}}})?"  # "-0" reads as zero too
        if self.sign == "positive":
            body = positive
        elif self.sign == "non_negative":
            body = f"{positive}|{zero}"
        elif self.sign == "non_zero":
            body = f"-?(?:{positive})"
        else:
            body = f"-?(?:{positive})|{zero}"
        return f"^(?:{body})$"


def _positive(maximum: int) -> str:
    """Alternatives matching the amount strings of value 1..maximum micro-units."""
    whole, fraction = divmod(maximum, MICRO)
    digits = f"{fraction:0{DECIMALS}d}"
    any_fraction = f"(?:\\.[0-9]{{1,{DECIMALS}}})?"
    parts = []
    if whole >= 2:  # 1 .. whole-1 units, any fraction
        parts.append(f"0*(?:{_integers(1, whole - 1)}){any_fraction}")
    if whole >= 1:  # exactly whole units, a fraction up to the maximum's
        parts.append(f"0*{whole}(?:\\.{_fraction_at_most(digits, nonzero=False)})?")
        parts.append(f"0+\\.{_nonzero_digits(DECIMALS)}")
    else:  # less than one unit
        parts.append(f"0+\\.{_fraction_at_most(digits, nonzero=True)}")
    return "|".join(parts)


def _digit_class(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return "[0-9]" if (low, high) == (0, 9) else f"[{low}-{high}]"


def _same_length(low: str, high: str) -> str:
    """Digit strings of one length between ``low`` and ``high`` (inclusive)."""
    if not low:
        return ""
    if low == "0" * len(low) and high == "9" * len(high):
        return f"[0-9]{{{len(low)}}}"
    first_low, first_high = int(low[0]), int(high[0])
    if first_low == first_high:
        return low[0] + _same_length(low[1:], high[1:])
    rest = len(low) - 1
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return _digit_class(first_low, first_high) + (f"[0-9]{{{rest}}}" if rest else "")
    parts = [low[0] + _same_length(low[1:], "9" * rest)]
    if first_high - first_low > 1:
        middle = _digit_class(first_low + 1, first_high - 1)
        parts.append(middle + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(high[0] + _same_length("0" * rest, high[1:]))
    return "(?:" + "|".join(parts) + ")"


def _integers(low: int, high: int) -> str:
    """Integers ``low``..``high`` (``low >= 1``) written without leading zeros."""
    parts = []
    for length in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (length - 1))
        end = min(high, 10**length - 1)
        parts.append(_same_length(str(start), str(end)))
    return "|".join(parts)


def _nonzero_digits(most: int) -> str:
    """1..``most`` digits, not all zero."""
    return "(?:" + "|".join(
        "0" * first + "[1-9]" + (f"[0-9]{{0,{most - first - 1}}}" if most - first > 1 else "")
        for first in range(most)) + ")"


def _fraction_at_most(limit: str, *, nonzero: bool) -> str:
    """1..6 fraction digits whose value, padded with zeros to 6 digits, is at most
    ``limit`` (6 digits); with ``nonzero``, not all of them zero."""

    def from_position(i: int, seen_nonzero: bool) -> str:
        left = len(limit) - i  # digits that may still follow, this one included
        if left == 0:
            return ""
        if limit[i:] == "0" * left and (seen_nonzero or not nonzero):
            return f"0{{{0 if i > 0 else 1},{left}}}"  # only zeros may follow
        parts = []
        if i > 0 and (seen_nonzero or not nonzero):
            parts.append("")  # the fraction ends here: the padding zeros are not more
        digit = int(limit[i])
        if digit > 0:  # a smaller digit here: anything may follow
            tail = f"[0-9]{{0,{left - 1}}}" if left > 1 else ""
            if nonzero and not seen_nonzero:
                if left > 1:  # a zero here must be followed by a non-zero digit
                    parts.append("0" + _nonzero_digits(left - 1))
                if digit > 1:
                    parts.append(_digit_class(1, digit - 1) + tail)
            else:
                parts.append(_digit_class(0, digit - 1) + tail)
        parts.append(limit[i] + from_position(i + 1, seen_nonzero or digit > 0))
        return "(?:" + "|".join(parts) + ")"

    return from_position(0, False)

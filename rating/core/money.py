"""Exact money arithmetic in integer micro-units (10**-6 of a currency unit).

Amounts cross every interface as decimal strings with up to 6 decimals; inside
the engine they are plain ``int`` micro-units so no float ever touches money.
"""

from __future__ import annotations

import re

MICRO = 1_000_000
DECIMALS = 6

# No balance may leave -BALANCE_BOUND..BALANCE_BOUND (10**12 units of any currency):
# far above any real balance, and far enough below PostgreSQL's bigint (9.2 * 10**18
# micro-units) that a balance plus a whole batch of maximal charges cannot overflow.
BALANCE_BOUND = 10**18
# The default largest single amount a caller may give (top-up, recharge, adjustment,
# opening balance): 1 000 000 units. A setting may lower or raise it, never past the bound.
DEFAULT_MAX_AMOUNT = 1_000_000 * MICRO

# Anchored and ASCII-only: ``str.isdigit`` would accept other scripts' digits.
# An amount has at most this many digits before the point: every bound here is far
# smaller (the balance bound has 13), and Python refuses int() of 4 300 digits.
_MAX_WHOLE_DIGITS = 30
_AMOUNT_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)


def parse_amount(text: str) -> int:
    """Parse a decimal string such as ``"12.3456"`` or ``"-0.5"`` into micro-units.

    Raises ``ValueError`` naming the problem for anything that is not a plain
    decimal with at most 6 decimals (floats, exponents, ``NaN``, ``+1``, ``1.``).
    """
    if not isinstance(text, str):
        raise ValueError(f"amount must be a decimal string, got {type(text).__name__}")
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a decimal amount: {text!r}")
    sign, whole, frac = match.groups()
    if frac is None:
        frac = ""
    if len(frac) > DECIMALS:
        raise ValueError(f"more than {DECIMALS} decimals: {text!r}")
    whole = whole.lstrip("0") or "0"  # int() refuses 4 300 digits, zeros included
    if len(whole) > _MAX_WHOLE_DIGITS:  # far past any bound
        raise ValueError(f"amount too large: {len(whole)} digits before the point")
    micros = int(whole) * MICRO + int(frac.ljust(DECIMALS, "0"))
    return -micros if sign else micros


def format_amount(micros: int) -> str:
    """Format micro-units as a decimal string with exactly 6 decimals."""
    if not isinstance(micros, int) or isinstance(micros, bool):
        raise TypeError(f"micro-units must be an int, got {type(micros).__name__}")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def round_half_up_div(numer: int, denom: int) -> int:
    """``numer / denom`` rounded to the nearest integer, halves away from zero.

    Money amounts are rounded "half up" in the commercial sense, so a negative
    half rounds to the more negative integer, mirroring the positive case.
    """
    if type(numer) is not int or type(denom) is not int:
        raise TypeError("round_half_up_div takes ints only")
    if denom <= 0:
        raise ValueError("denominator must be positive")
    if numer >= 0:
        return (2 * numer + denom) // (2 * denom)
    return -((-2 * numer + denom) // (2 * denom))

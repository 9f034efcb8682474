"""The exact pricing rule of the contract (§4), in integer micro-units.

``charge(from_s, to_s) = cost(to_s) - cost(from_s)`` is what makes rating
stateless: a call's events telescope to ``cost(total)`` in any order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A free timed rate (zero per minute, affordable connect fee) never runs out;
# authorization needs a finite number, so it is capped at about 68 years.
UNLIMITED_SECONDS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Increment:
    """Billing blocks: the first block is ``first`` seconds, then ``step`` each."""

    first: int
    step: int
    # "first/step", as every interface and the ledger write it: made once, since a deck
    # shares a few increments among all its rates (and rating writes it per event).
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in (("first", self.first), ("step", self.step)):
            if type(value) is not int or value < 1:
                raise ValueError(f"increment {name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "text", f"{self.first}/{self.step}")

    @classmethod
    def parse(cls, text: str) -> Increment:
        """Parse ``"a/b"`` (for example ``"60/60"`` or ``"1/1"``)."""
        first, sep, step = text.partition("/")
        if (
            not sep
            or not (first.isascii() and first.isdigit())
            or not (step.isascii() and step.isdigit())
        ):
            raise ValueError(f"malformed increment {text!r}, expected 'first/step' seconds")
        return cls(int(first), int(step))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class TimedRate:
    """A per-minute rate with a connect fee and billing increment (micro-units)."""

    rate_per_minute: int
    connect_fee: int
    increment: Increment

    def __post_init__(self) -> None:
        # Negative prices would make charges negative and break the monotonicity
        # that pre-call authorization relies on.
        for name, value in (
            ("rate_per_minute", self.rate_per_minute),
            ("connect_fee", self.connect_fee),
        ):
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative int of micro-units")


def billable_seconds(t: int, inc: Increment) -> int:
    """Seconds billed for ``t`` elapsed seconds: first block, then whole steps."""
    if t <= 0:
        if t < 0:
            raise ValueError(f"elapsed seconds must be >= 0, got {t}")
        return 0
    first = inc.first
    if t <= first:
        return first
    step = inc.step
    return first + -(-(t - first) // step) * step


def cost(t: int, rate: TimedRate) -> int:
    """Cumulative cost in micro-units of the first ``t`` seconds of a session."""
    if t <= 0:
        if t < 0:
            raise ValueError(f"elapsed seconds must be >= 0, got {t}")
        return 0
    # billable_seconds and round_half_up_div inlined: this runs twice per call event.
    # Prices are never negative, so half-up is (n + 30) // 60.
    inc = rate.increment
    first = inc.first
    billable = first if t <= first else first + -(-(t - first) // inc.step) * inc.step
    return rate.connect_fee + (rate.rate_per_minute * billable + 30) // 60


def charge(from_s: int, to_s: int, rate: TimedRate) -> int:
    """Charge for the interval ``from_s..to_s`` of elapsed time (never negative)."""
    if not 0 <= from_s <= to_s:
        raise ValueError(f"need 0 <= from_s <= to_s, got {from_s}..{to_s}")
    if from_s == 0:
        return cost(to_s, rate)
    return cost(to_s, rate) - cost(from_s, rate)


def timed_charge(from_s: int, to_s: int, rate: TimedRate) -> tuple[int, int]:
    """``(charge, billed seconds)`` of the interval ``from_s..to_s``: the charge as
    ``charge`` computes it, and ``billable(to_s) - billable(from_s)``."""
    if not 0 <= from_s <= to_s:
        raise ValueError(f"need 0 <= from_s <= to_s, got {from_s}..{to_s}")
    # billable_seconds and cost inlined: this runs for every call event.
    inc = rate.increment
    first, step = inc.first, inc.step
    per_minute = rate.rate_per_minute
    if to_s == 0:
        return 0, 0
    to_billed = first if to_s <= first else first + -(-(to_s - first) // step) * step
    amount = rate.connect_fee + (per_minute * to_billed + 30) // 60
    if from_s == 0:
        return amount, to_billed
    from_billed = first if from_s <= first else first + -(-(from_s - first) // step) * step
    amount -= rate.connect_fee + (per_minute * from_billed + 30) // 60
    return amount, to_billed - from_billed


def sms_cost(rate_micros: int, segments: int) -> int:
    """Cost of ``segments`` SMS segments; exact since rates carry 6 decimals."""
    if segments < 0:
        raise ValueError(f"segments must be >= 0, got {segments}")
    return rate_micros * segments


def seconds_covered(budget_micros: int, rate: TimedRate) -> int:
    """The largest ``t`` with ``cost(t) <= budget``; 0 if the first block is unaffordable.

    Closed form, O(1) for any budget: ``round_half_up(n / 60) <= m`` holds exactly
    when ``n <= 60 m + 29``, which bounds the billable seconds; the answer is the
    largest block boundary within that bound (cost is flat inside a block).
    """
    headroom = budget_micros - rate.connect_fee
    first, step = rate.increment.first, rate.increment.step
    if headroom < 0:
        return 0
    per_minute = rate.rate_per_minute
    if per_minute == 0:
        return UNLIMITED_SECONDS
    max_billable = (60 * headroom + 29) // per_minute
    if max_billable < first:
        return 0
    return first + (max_billable - first) // step * step

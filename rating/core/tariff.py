"""The in-memory tariff model: per-plan versions of call, toll-free, SMS and STT prices.

Built once by ``tariff_files`` and never mutated afterwards, so a whole book can
be swapped atomically and read by many batches without locks.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rating.core.countries import country_of
from rating.core.errors import NoRate, UnknownPlan
from rating.core.pricing import TimedRate

# The four billed services, in the order every listing shows them.
SERVICES = ("call", "tollfree", "sms", "stt")


@dataclass(frozen=True, slots=True)
class CallDeck:
    """Call rates by country, refined by E.164 digit prefixes (longest match wins).

    The number's own country comes first (CONTRACT §4: derived from the number itself):
    only that country's prefix rows, then its country row, may price it. Countries
    that share a calling code (GB and Jersey under +44, the US and Canada under +1)
    never borrow each other's rows: a Jersey mobile is not priced by GB's 447 row.
    A country may have prefix rows and no country row (the billing team may price
    only some of its ranges); its other numbers then have no rate.
    """

    by_country: Mapping[str, TimedRate]
    by_prefix: Mapping[str, tuple[str, TimedRate]]
    # Distinct prefix lengths, longest first: a lookup costs one dict probe per
    # length present (a handful), whatever the number of prefixes.
    prefix_lengths: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        lengths = sorted({len(prefix) for prefix in self.by_prefix}, reverse=True)
        object.__setattr__(self, "prefix_lengths", tuple(lengths))

    def lookup(self, e164: str) -> tuple[str | None, TimedRate]:
        """``(country, rate)`` for a number ``"+<digits>"``, or raise ``NoRate``."""
        country, _prefix, rate = self.match(e164)
        return country, rate

    def match(self, e164: str) -> tuple[str | None, str | None, TimedRate]:
        """``(country, matched prefix or None for the country row, rate)``, or ``NoRate``."""
        country = country_of(e164)
        if country is None:
            raise NoRate(f"no call rate for {e164} (country unknown)")
        by_prefix = self.by_prefix
        if by_prefix:
            digits = e164[1:]
            for length in self.prefix_lengths:
                prefix = digits[:length]
                hit = by_prefix.get(prefix)
                if hit is not None and hit[0] == country:
                    return country, prefix, hit[1]
        rate = self.by_country.get(country)
        if rate is not None:
            return country, None, rate
        raise NoRate(f"no call rate for {e164} (country {country})")

    def __len__(self) -> int:
        return len(self.by_country) + len(self.by_prefix)


@dataclass(frozen=True, slots=True)
class TollFreeDeck:
    """Toll-free per-minute rates by (country, direction)."""

    rates: Mapping[tuple[str, str], TimedRate]

    def lookup(self, e164: str, direction: str) -> tuple[str, TimedRate]:
        country = country_of(e164)
        rate = self.rates.get((country, direction)) if country is not None else None
        if country is None or rate is None:
            raise NoRate(
                f"no toll-free {direction} rate for {e164} (country {country or 'unknown'})"
            )
        return country, rate


@dataclass(frozen=True, slots=True)
class SmsDeck:
    """Per-segment SMS prices (micro-units) by destination country."""

    rates: Mapping[str, int]

    def lookup(self, e164: str) -> tuple[str, int]:
        country = country_of(e164)
        rate = self.rates.get(country) if country is not None else None
        if country is None or rate is None:
            raise NoRate(f"no SMS rate for {e164} (country {country or 'unknown'})")
        return country, rate


@dataclass(frozen=True, slots=True)
class PlanVersion:
    """The prices of one plan from ``effective_from`` until the next version."""

    plan_id: str
    currency: str
    effective_from: datetime
    call: CallDeck | None = None
    tollfree: TollFreeDeck | None = None
    sms: SmsDeck | None = None
    stt: TimedRate | None = None


@dataclass(frozen=True, slots=True)
class _PlanHistory:
    starts: tuple[datetime, ...]
    versions: tuple[PlanVersion, ...]


class TariffBook:
    """Every plan's versions; ``plan(id, at)`` picks the version in force at ``at``."""

    __slots__ = ("_plans",)

    def __init__(self, versions: list[PlanVersion]) -> None:
        grouped: dict[str, list[PlanVersion]] = {}
        for version in versions:
            grouped.setdefault(version.plan_id, []).append(version)
        plans: dict[str, _PlanHistory] = {}
        for plan_id, group in grouped.items():
            group.sort(key=lambda version: version.effective_from)
            starts = tuple(version.effective_from for version in group)
            if len(set(starts)) != len(starts):
                raise ValueError(f"plan {plan_id!r} has two versions with one effective_from")
            plans[plan_id] = _PlanHistory(starts, tuple(group))
        self._plans = plans

    def plan(self, plan_id: str, at: datetime | None = None) -> PlanVersion:
        """The version with the greatest ``effective_from <= at`` (``None``: now)."""
        history = self._plans.get(plan_id)
        if history is None:
            raise UnknownPlan(f"unknown plan {plan_id!r}")
        when = datetime.now(UTC) if at is None else at
        index = bisect_right(history.starts, when)
        if index == 0:
            raise UnknownPlan(f"plan {plan_id!r} has no version in force at {when.isoformat()}")
        return history.versions[index - 1]

    def plan_ids(self) -> list[str]:
        """Plan ids, sorted."""
        return sorted(self._plans)

    def versions(self, plan_id: str) -> tuple[PlanVersion, ...]:
        """All versions of a plan, oldest first."""
        history = self._plans.get(plan_id)
        if history is None:
            raise UnknownPlan(f"unknown plan {plan_id!r}")
        return history.versions

    def currency(self, plan_id: str) -> str:
        """The plan's currency (the same in every version, checked on load)."""
        return self.versions(plan_id)[-1].currency

    def __len__(self) -> int:
        return len(self._plans)

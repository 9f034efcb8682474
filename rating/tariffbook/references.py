"""A tariff reload may not take away what accounts still use (checked before it is swapped in).

Refused, like an invalid file, when the new files would:

- drop a plan that accounts are on (their usage would go to the DLQ as unknown_plan);
- drop a version of such a plan that has been in force (``effective_from`` past):
  usage from its period, arriving late or replayed, would be priced by another version
  or refused. Changing a version's prices, or dropping one not yet in force, is fine;
- give such a plan another currency than its accounts hold (their usage would be
  refused as currency_mismatch).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import datetime

from rating.core.errors import TariffIssue
from rating.core.tariff import TariffBook

# Plan id -> the currencies of the accounts on it.
PlansInUse = Mapping[str, Set[str]]

_WHERE = "plans"  # the issues name the plans directory: the dropped file is not there


def dropped_references(old: TariffBook, new: TariffBook, in_use: PlansInUse,
                       now: datetime) -> list[TariffIssue]:
    """What ``new`` would take away from the accounts of ``in_use``; [] when nothing."""
    issues: list[TariffIssue] = []
    new_plans = set(new.plan_ids())
    old_plans = set(old.plan_ids())
    for plan_id in sorted(in_use):
        if plan_id not in new_plans:
            if plan_id in old_plans:
                issues.append(TariffIssue(_WHERE, 0, f"plan {plan_id!r} is removed, but "
                                          "accounts are on it: move them to another plan "
                                          "first"))
            continue
        kept = {version.effective_from for version in new.versions(plan_id)}
        if plan_id in old_plans:
            for version in old.versions(plan_id):
                started = version.effective_from
                if started <= now and started not in kept:
                    issues.append(TariffIssue(
                        _WHERE, 0, f"plan {plan_id!r}: the version effective from "
                        f"{started.isoformat()} is removed, but it has been in force and "
                        "accounts are on the plan (change its prices instead)"))
        currency = new.currency(plan_id)
        others = sorted(c for c in in_use[plan_id] if c != currency)
        if others:
            issues.append(TariffIssue(
                _WHERE, 0, f"plan {plan_id!r}: currency {currency}, but accounts on it hold "
                f"{', '.join(others)}"))
    return issues

"""``accounts auto-recharge``'s ``--max-per-day N`` and ``--alert-thresholds A,B``."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from rating.core.errors import CommandError, InvalidRequest
from rating.core.money import parse_amount
from rating.core.thresholds import alert_thresholds as alert_thresholds_of
from rating.stores.recharge_settings import (
    MAX_PER_DAY_LIMIT,
    check_max_per_day,
    set_alert_thresholds,
    set_max_per_day,
)


@dataclass(frozen=True, slots=True)
class RechargeLimitArgs:
    max_per_day: int | None
    alert_thresholds: tuple[int, ...] | None

    @property
    def given(self) -> bool:
        return self.max_per_day is not None or self.alert_thresholds is not None

    async def apply(self, pool: asyncpg.Pool, account_id: str) -> None:
        if self.max_per_day is not None:
            await set_max_per_day(pool, account_id, self.max_per_day)
        if self.alert_thresholds is not None:
            await set_alert_thresholds(pool, account_id, self.alert_thresholds)


def recharge_limit_args(max_per_day: int | None,
                        alert_thresholds: str | None) -> RechargeLimitArgs:
    """Checked before anything is changed; ``--alert-thresholds ""`` removes them all."""
    if max_per_day is not None:
        try:
            check_max_per_day(max_per_day)
        except InvalidRequest as exc:
            raise CommandError(f"--max-per-day: expected 1..{MAX_PER_DAY_LIMIT},"
                               f" got {max_per_day}") from exc
    thresholds = None
    if alert_thresholds is not None:
        texts = [t.strip() for t in alert_thresholds.split(",") if t.strip()]
        try:
            thresholds = alert_thresholds_of([parse_amount(t) for t in texts])
        except ValueError as exc:
            raise CommandError(f"--alert-thresholds: {exc}") from None
    return RechargeLimitArgs(max_per_day, thresholds)

"""Notification thresholds against real PostgreSQL: ``balance.alert`` once per crossing,
from the usage debit statement and from credits alike, and the account's runway."""

from __future__ import annotations

import asyncpg

from rating.core.thresholds import alert_crossings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.ledger import ALERT_CROSSINGS_SQL
from rating.stores.outbox import BalanceChange, crossing_events
from rating.stores.recharge_settings import account_view, set_alert_thresholds
from tests.payments_support import EUR, debit
from tests.support import ledger_explains_balances


async def alerts(pool: asyncpg.Pool, account_id: str = "acct-1") -> list[tuple[str, int, int]]:
    rows = await pool.fetch("SELECT event_id, threshold, balance FROM outbox"
                            " WHERE type = 'balance.alert' AND account_id = $1 ORDER BY seq",
                            account_id)
    return [(r["event_id"], r["threshold"], r["balance"]) for r in rows]


async def test_the_debit_statement_announces_alerts_as_the_rule_does(
        pool: asyncpg.Pool) -> None:
    # Every ordering of before, after and two thresholds, equalities included.
    values = range(-2, 5)
    cases = [(b, a) for b in values for a in values]
    thresholds = [3, 1]
    rows = await pool.fetch(
        "SELECT i, alert.threshold FROM unnest($1::bigint[], $2::bigint[])"
        " WITH ORDINALITY AS u(before, after, i),"
        " LATERAL (SELECT $3::bigint[] AS alerts) a, LATERAL "
        + ALERT_CROSSINGS_SQL.replace("u.alerts", "a.alerts")
        + " ORDER BY i, alert.threshold DESC",
        [c[0] for c in cases], [c[1] for c in cases], thresholds)
    in_sql: dict[int, list[int]] = {}
    for r in rows:
        in_sql.setdefault(r["i"] - 1, []).append(r["threshold"])
    expected = {i: crossed for i, (b, a) in enumerate(cases)
                if (crossed := alert_crossings(b, a, thresholds))}
    assert expected == in_sql and expected  # some cases do cross


async def test_each_threshold_is_announced_once_per_crossing(pool: asyncpg.Pool) -> None:
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "standard", "EUR", EUR("100"), EUR("5")))
    await set_alert_thresholds(pool, "acct-1", [EUR("10"), EUR("50")])
    assert (await store.get("acct-1")).alert_thresholds == (EUR("50"), EUR("10"))

    await debit(pool, "acct-1", "40")   # 100 -> 60: nothing
    await debit(pool, "acct-1", "15")   # 60 -> 45: below 50
    await debit(pool, "acct-1", "5")    # 45 -> 40: still below 50, nothing more
    assert [(t, b) for _, t, b in await alerts(pool)] == [(EUR("50"), EUR("45"))]

    await store.credit("acct-1", kind="topup", source="topup", key="acct-1/t1",
                       amount=EUR("20"))   # 40 -> 60: back above 50, re-armed
    await debit(pool, "acct-1", "55")   # 60 -> 5: both at once, highest first
    await store.credit("acct-1", kind="adjustment", source="adjustment", key="acct-1/a1",
                       amount=EUR("20"), reason="goodwill")     # 5 -> 25
    await store.credit("acct-1", kind="adjustment", source="adjustment", key="acct-1/a2",
                       amount=EUR("-16"), reason="correction")  # 25 -> 9: a credit crosses too
    found = await alerts(pool)
    assert [(t, b) for _, t, b in found] == [
        (EUR("50"), EUR("45")), (EUR("50"), EUR("5")), (EUR("10"), EUR("5")),
        (EUR("10"), EUR("9"))]
    assert len({event_id for event_id, _, _ in found}) == 4
    # The debit statement's ids are those of crossing_events, as the credits' are.
    version = await pool.fetchval(
        "SELECT split_part(event_id, ':', 2)::bigint FROM outbox"
        " WHERE type = 'balance.alert' AND balance = $1 LIMIT 1", EUR("5"))
    expected = crossing_events(BalanceChange("acct-1", EUR("60"), EUR("5"), EUR("5"), "EUR",
                                             version, (EUR("50"), EUR("10"))))
    assert [e.event_id for e in expected if e.type == "balance.alert"] == [
        event_id for event_id, _, balance in found if balance == EUR("5")]
    # The low-balance threshold is announced on its own, as always.
    low = await pool.fetchval("SELECT count(*) FROM outbox WHERE type = 'balance.low'")
    assert low == 0  # 5 is not below 5
    assert await ledger_explains_balances(pool) == []

    await set_alert_thresholds(pool, "acct-1", [])
    await debit(pool, "acct-1", "8")  # 9 -> 1: no thresholds, no alert
    assert len(await alerts(pool)) == 4


async def test_runway_is_days_of_credit_at_the_last_week_s_spend(pool: asyncpg.Pool) -> None:
    store = AccountStore(pool)
    await store.create(NewAccount("acct-1", "standard", "EUR", EUR("24.50"), EUR("0")))
    view = await account_view(pool, await store.get("acct-1"))
    assert view["runway"] is None and view["last_recharge"] is None
    assert view["average_daily_spend"] == "0.000000"

    await debit(pool, "acct-1", "3.50")  # 21.00 left at 0.50 a day
    # Spending more than a week ago does not count.
    await pool.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
    await debit(pool, "acct-1", "7")
    await pool.execute("UPDATE ledger SET recorded_at = now() - interval '8 days'"
                       " WHERE amount = $1", -EUR("7"))
    await pool.execute("ALTER TABLE ledger ENABLE TRIGGER ledger_append_only")
    view = await account_view(pool, await store.get("acct-1"))
    assert view["balance"] == "14.000000"
    assert view["average_daily_spend"] == "0.500000"
    assert view["runway"] == 28.0

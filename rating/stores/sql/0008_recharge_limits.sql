-- Automatic recharge customers can trust (CONTRACT §12): a daily limit per account,
-- declines that turn automatic recharge off (and say why), a sweeper that finds every
-- account left below its threshold, and notification thresholds (balance.alert).

ALTER TABLE accounts
    -- At most this many recharges in any 24 hours (succeeded or in flight).
    ADD COLUMN auto_recharge_max_per_day integer NOT NULL DEFAULT 5
        CHECK (auto_recharge_max_per_day BETWEEN 1 AND 100),
    -- Set when the engine turned automatic recharge off (a hard decline, or the last
    -- attempt declined): hard_decline | attempts_exhausted. Cleared when it is turned on.
    ADD COLUMN auto_recharge_disabled_reason text,
    ADD COLUMN auto_recharge_disabled_at timestamptz,
    -- When recharge.limited was last announced: at most once in 24 hours.
    ADD COLUMN recharge_limited_at timestamptz,
    -- Notification thresholds, highest first: balance.alert when the balance falls below one.
    ADD COLUMN alert_thresholds bigint[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(alert_thresholds) <= 10 AND 0 <= ALL (alert_thresholds));

-- A recharge row whose handling failed for a reason that is not an outage: the error,
-- how often, and it is tried again only after a long wait (never in a tight loop).
ALTER TABLE recharges
    ADD COLUMN last_error text,
    ADD COLUMN errors integer NOT NULL DEFAULT 0;

-- The daily limit counts an account's recharges that succeeded in the last 24 hours.
CREATE INDEX recharges_succeeded_by_account ON recharges (account_id, settled_at)
    WHERE status = 'succeeded';
-- The account's last recharge (the billing page shows it).
CREATE INDEX recharges_by_account ON recharges (account_id, id);
-- The sweeper reads only accounts with automatic recharge on. Neither index names a
-- column the usage debit updates, so balance updates stay HOT.
CREATE INDEX accounts_auto_recharge_on ON accounts (id) WHERE auto_recharge_enabled;
CREATE INDEX accounts_auto_recharge_disabled ON accounts (auto_recharge_disabled_reason)
    WHERE auto_recharge_disabled_reason IS NOT NULL;
-- An account's latest balance.low: the crossing a recharge is keyed by.
CREATE INDEX outbox_balance_low_by_account ON outbox (account_id, seq)
    WHERE type = 'balance.low';

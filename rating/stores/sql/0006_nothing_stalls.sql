-- Nothing stalls, nothing is lost, nothing out of order.

-- Every balance stays within rating.core.money.BALANCE_BOUND (10^18 micro-units either
-- way): far above any real balance, far below bigint's overflow. A debit that would
-- leave it fails on this constraint, and the usage consumer refuses the event that
-- crossed it (error_code balance_out_of_range) rather than the whole batch. NOT VALID:
-- rows written before it are not checked until they change.
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_within_bound
    CHECK (balance BETWEEN -1000000000000000000 AND 1000000000000000000) NOT VALID;

-- The outbox carries the account's version at the change each row announces, so a
-- consumer of balance.events can order one account's events or drop stale ones.
-- Writers that do not give it get the account's current version: they write in the
-- transaction that changed the account (after the change), or announce without one.
ALTER TABLE outbox
    ADD COLUMN version bigint,
    -- A row the relay cannot publish is set aside (failures, last_error) and tried
    -- again at next_attempt_at, with a growing delay, without holding up the others.
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN next_attempt_at timestamptz;

CREATE FUNCTION outbox_version_of_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT version INTO NEW.version FROM accounts WHERE id = NEW.account_id;
    RETURN NEW;
END $$;
CREATE TRIGGER outbox_version BEFORE INSERT ON outbox
    FOR EACH ROW WHEN (NEW.version IS NULL) EXECUTE FUNCTION outbox_version_of_account();

-- Sent rows are purged after a retention; this finds them without a scan.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- A top-up whose settling fails (its credit refused, a bug) is marked and asked again
-- later, with a growing delay, instead of every few seconds ahead of the others.
ALTER TABLE topup_payments
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;

-- The DLQ's overflow store: a refused usage record that the broker would not take
-- even in its reduced form (body dropped, headers bounded) is kept here, whole, with
-- the reason, so the partition moves on and nothing is lost.
CREATE TABLE dead_letters (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    key               bytea,
    value             bytea,
    error_code        text NOT NULL,
    error             text NOT NULL,
    publish_error     text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, source_partition, source_offset)
);

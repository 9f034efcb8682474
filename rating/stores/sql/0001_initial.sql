-- Accounts, the append-only ledger and the outbox of balance events.
-- Money is bigint micro-units (10^-6 of the account's currency) everywhere.

CREATE TABLE accounts (
    id                     text PRIMARY KEY CHECK (id <> ''),
    plan_id                text NOT NULL,
    currency               char(3) NOT NULL,
    -- Invariant: balance = opening_balance + sum(ledger.amount) for the account.
    opening_balance        bigint NOT NULL DEFAULT 0,
    balance                bigint NOT NULL,
    low_balance_threshold  bigint NOT NULL DEFAULT 0 CHECK (low_balance_threshold >= 0),
    auto_recharge_enabled  boolean NOT NULL DEFAULT false,
    auto_recharge_amount   bigint CHECK (auto_recharge_amount > 0),
    stt_billing            text NOT NULL DEFAULT 'credit' CHECK (stt_billing IN ('credit', 'invoice')),
    -- Bumped by every balance change; makes balance-event ids stable and unique.
    version                bigint NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT auto_recharge_enabled OR auto_recharge_amount IS NOT NULL)
);

-- Append-only: rows are never updated or deleted (enforced by the trigger below).
CREATE TABLE ledger (
    entry_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    text NOT NULL REFERENCES accounts (id),
    -- usage: a rated event debited from credit; invoice: usage billed on the invoice
    -- (amount 0, accrued holds the price); topup/recharge: credit landed;
    -- adjustment: a signed manual correction by support, with a reason.
    kind          text NOT NULL CHECK (kind IN ('usage', 'invoice', 'topup', 'recharge', 'adjustment')),
    service       text CHECK (service IN ('call', 'tollfree', 'sms', 'stt')),
    -- (event_source, event_id) identifies what caused the row: charged at most once.
    event_source  text NOT NULL,
    event_id      text NOT NULL,
    amount        bigint NOT NULL,
    accrued       bigint NOT NULL DEFAULT 0,
    currency      char(3) NOT NULL,
    country       text,
    plan_id       text,
    reason        text,
    event_time    timestamptz,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_source, event_id)
);
CREATE INDEX ledger_account_recent ON ledger (account_id, entry_id DESC);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- Balance and recharge events waiting to be published to balance.events.
CREATE TABLE outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    type         text NOT NULL,
    account_id   text NOT NULL,
    balance      bigint NOT NULL,
    threshold    bigint,
    currency     char(3) NOT NULL,
    extra        jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;

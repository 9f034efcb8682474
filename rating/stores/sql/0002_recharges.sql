-- Automatic recharges (one per balance.low crossing) and one-time top-up payments.
-- Money is bigint micro-units, as everywhere.

-- requested: an attempt is waiting to be sent to the provider (due at next_attempt_at);
-- charging:  the attempt was handed to the provider and its answer is not recorded yet
--            (re-asked with the same idempotency key once next_attempt_at passes);
-- pending:   the provider accepted it and settles later (polled at next_attempt_at);
-- succeeded / failed (attempts exhausted) / cancelled (balance recovered, or
-- auto-recharge turned off, before a retry was sent): final.
CREATE TABLE recharges (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The balance.low outbox event id: one recharge per crossing, whatever the redeliveries.
    crossing_id      text NOT NULL UNIQUE,
    account_id       text NOT NULL REFERENCES accounts (id),
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    status           text NOT NULL DEFAULT 'requested'
                     CHECK (status IN ('requested', 'charging', 'pending', 'succeeded',
                                       'failed', 'cancelled')),
    -- Each attempt has its own idempotency key (crossing and attempt): a decline is
    -- retried as a new payment, a lost answer is re-asked as the same one.
    attempt          integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    payment_id       text,
    last_reason      text,
    next_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz,
    CHECK ((status IN ('requested', 'charging', 'pending')) = (next_attempt_at IS NOT NULL))
);
-- Invariant 6: at most one recharge in flight per account.
CREATE UNIQUE INDEX recharges_one_in_flight ON recharges (account_id)
    WHERE status IN ('requested', 'charging', 'pending');
CREATE INDEX recharges_due ON recharges (next_attempt_at)
    WHERE status IN ('requested', 'charging', 'pending');

-- One-time top-ups: the payment behind each (account, idempotency key).
CREATE TABLE topup_payments (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       text NOT NULL REFERENCES accounts (id),
    idempotency_key  text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    -- requested: sent (or about to be) with no answer recorded; re-asked with the same key.
    status           text NOT NULL DEFAULT 'requested'
                     CHECK (status IN ('requested', 'pending', 'succeeded', 'declined')),
    payment_id       text,
    reason           text,
    next_check_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX topup_payments_unsettled ON topup_payments (next_check_at)
    WHERE status IN ('requested', 'pending');

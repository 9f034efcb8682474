-- Customer sessions (CONTRACT §8): a token reaches one account until it expires.
-- Only a SHA-256 digest of the token is kept: a database dump opens no account.
CREATE TABLE customer_sessions (
    token_digest bytea PRIMARY KEY,
    account_id   text NOT NULL,
    issued_by    text NOT NULL,
    issued_at    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX customer_sessions_expiry ON customer_sessions (expires_at);

-- Who did what, when, and how it ended: one row per write through the API or the
-- command line (top-ups, automatic recharge, STT billing mode, adjustments, account
-- creation, sessions issued). Append-only, like the ledger.
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    account_id text,
    outcome    text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_account ON audit_log (account_id, id);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only'
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_never_truncated BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

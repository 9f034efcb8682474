-- Account ids follow one rule (CONTRACT §8): 1-128 characters of A-Z a-z 0-9 . _ : -
-- The engine checks it where ids come in (API, command line, imports, usage events);
-- this CHECK is the database's own guard.
--
-- NOT VALID: the existing rows are not scanned, so this migration never fails on a
-- database that holds an older, looser id. PostgreSQL checks the constraint on every
-- row written from now on, updates of existing rows included: an account whose id is
-- outside the rule can no longer change (its usage events go to the DLQ as
-- invalid_event, and the API and the command line refuse the id), but its row and its
-- ledger stay as they are and remain readable. The ledger keys of credits
-- (rating.core.identifiers.credit_key) are the same as before for every id within the
-- rule, so existing top-ups and adjustments keep answering replays.
-- A database without such rows (every new one) gets the constraint validated at once.
ALTER TABLE accounts
    ADD CONSTRAINT accounts_id_charset CHECK (id ~ '^[A-Za-z0-9._:-]{1,128}$') NOT VALID;

DO $$
DECLARE
    outside bigint;
BEGIN
    SELECT count(*) INTO outside FROM accounts WHERE id !~ '^[A-Za-z0-9._:-]{1,128}$';
    IF outside = 0 THEN
        ALTER TABLE accounts VALIDATE CONSTRAINT accounts_id_charset;
    ELSE
        RAISE NOTICE '% account(s) have ids outside [A-Za-z0-9._:-]{1,128}: kept, read-only',
            outside;
    END IF;
END $$;

-- The ledger is append-only: 0001 refuses UPDATE and DELETE; TRUNCATE (which fires
-- no row or statement trigger of those kinds) is refused too. The engine's own role is
-- not granted TRUNCATE at all (deploy/postgres/least-privilege.sql); this stops the
-- schema's owner as well.
CREATE TRIGGER ledger_never_truncated BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

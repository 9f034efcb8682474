-- Least privilege, step 2 of 2: what the engine's role may do. Run as rating_owner after
-- the first `rating-engine migrate` (running it again changes nothing):
--     psql "$RATING_MIGRATE_DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/postgres/grants.sql
--
-- The engine reads and writes rows: SELECT, INSERT and UPDATE (SELECT ... FOR UPDATE
-- needs UPDATE), and takes numbers from sequences (audit_log's id). It deletes only
-- the outbox rows it sent longer ago than RATING_OUTBOX_RETENTION_HOURS. It is never
-- granted TRUNCATE, REFERENCES, TRIGGER or any DDL. It may not UPDATE the ledger or the
-- audit log (append-only: their triggers refuse UPDATE, DELETE and TRUNCATE even to the
-- owner) nor write schema_migrations (it reads it to see that no migration is pending;
-- with one pending, `run` stops and says to run `rating-engine migrate`).
GRANT USAGE ON SCHEMA public TO rating_engine;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO rating_engine;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO rating_engine;
GRANT DELETE ON outbox TO rating_engine;
REVOKE UPDATE ON ledger, audit_log FROM rating_engine;
REVOKE INSERT, UPDATE ON schema_migrations FROM rating_engine;
-- Tables and sequences that later migrations create (as rating_owner) get the same
-- rows-only grants.
ALTER DEFAULT PRIVILEGES FOR ROLE rating_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE ON TABLES TO rating_engine;
ALTER DEFAULT PRIVILEGES FOR ROLE rating_owner IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO rating_engine;

-- Least privilege, step 1 of 2: the roles and the database. Run once, as a superuser:
--     psql -v ON_ERROR_STOP=1 -f deploy/postgres/roles.sql
-- then set the passwords (\password rating_owner, \password rating_engine).
--
--   rating_owner   owns the schema: `rating-engine migrate` connects as it
--                  (RATING_MIGRATE_DATABASE_URL, e.g. a Kubernetes Job's Secret).
--   rating_engine  `rating-engine run` connects as it (RATING_DATABASE_URL): it may read
--                  and write rows (deploy/postgres/grants.sql) and nothing else.
CREATE ROLE rating_owner LOGIN;
CREATE ROLE rating_engine LOGIN;
CREATE DATABASE rating OWNER rating_owner;
REVOKE ALL ON DATABASE rating FROM PUBLIC;
GRANT CONNECT ON DATABASE rating TO rating_engine;

\connect rating
-- Before PostgreSQL 15 every role could create tables in "public": only the owner may.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO rating_owner;

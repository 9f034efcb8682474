-- What priced each usage row (CONTRACT §13): the number, the call (message, job), the
-- interval or quantity, billed seconds, rate, connect fee, increment, the matched
-- prefix or country and the plan version's effective_from (rating.core.detail).
-- NULL on credits and on rows written before this column existed. A nullable column
-- without a default: adding it rewrites nothing.
ALTER TABLE ledger ADD COLUMN detail jsonb;

-- What priced each usage row (CONTRACT §13; rating.core.detail.RatedDetail): enough to
-- recompute its amount with the pricing rule of §4 from the row alone. NULL on credits
-- and on rows written before these columns existed.
--
-- Typed columns rather than one jsonb: measured on the batch debit, a jsonb detail cost
-- the database about half again as much CPU per event and 45 % more WAL, these columns
-- a few percent CPU and 12 % more WAL. Nullable, without defaults: adding them rewrites
-- nothing.
ALTER TABLE ledger
    ADD COLUMN number        text,         -- destination, or the toll-free number
    ADD COLUMN usage_id      text,         -- data.call_id, message_id or job_id
    ADD COLUMN direction     text,         -- toll-free: inbound or outbound
    ADD COLUMN from_s        bigint,       -- elapsed seconds covered (STT: 0..seconds)
    ADD COLUMN to_s          bigint,
    ADD COLUMN quantity      bigint,       -- billed seconds (timed services) or SMS segments
    ADD COLUMN rate          bigint,       -- micro-units per minute (per segment for SMS)
    ADD COLUMN connect_fee   bigint,
    ADD COLUMN increment     text,         -- "first/step" seconds
    ADD COLUMN prefix        text,         -- the matched prefix row; NULL: the country row
    ADD COLUMN plan_version  timestamptz;  -- effective_from of the plan version applied

-- Credit reservations (CONTRACT §10): a voice switch reserves credit when a call starts;
-- the call's usage events settle against the hold, final: true closes it, and a sweeper
-- closes what a vanished switch left open. Money is bigint micro-units, as everywhere.
--
-- Holds live beside the balance, so that a grant and a debit serialize on the account
-- row. Every writer locks the account row(s) first (several: in id order), then the
-- reservation rows: the same order as the usage batch debit, so nobody deadlocks.
-- Invariant: accounts.held = sum(reservations.held) and accounts.open_reservations =
-- count of open reservations, per account; available = balance - held.
--
-- Reserve, extend, release and expire commit without waiting for the WAL flush
-- (synchronous_commit off for their transactions only): a switch waits on each at call
-- set-up, and a flush per grant made the disk the limit (WAL sync waits of tens of ms
-- under load). What a database crash can lose is the last moments of grants, extensions
-- and releases, all at once and consistently (held and the reservations move together):
-- never money. Charges, and their settlement against holds, commit durably with the
-- usage debit; a call whose grant was lost is billed as a call without a reservation.

ALTER TABLE accounts
    ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    ADD COLUMN open_reservations integer NOT NULL DEFAULT 0 CHECK (open_reservations >= 0);

CREATE TABLE reservations (
    reservation_id   text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    account_id       text NOT NULL REFERENCES accounts (id),
    -- The call: a usage event with this source and data.call_id settles against it.
    event_source     text NOT NULL,
    call_id          text NOT NULL,
    service          text NOT NULL CHECK (service IN ('call', 'tollfree')),
    number           text NOT NULL,  -- the destination, or the toll-free number
    direction        text CHECK (CASE service
                                 WHEN 'tollfree' THEN coalesce(direction IN ('inbound', 'outbound'), false)
                                 ELSE direction IS NULL END),
    currency         char(3) NOT NULL,
    -- The rate the grants were computed with (the tariff in force at reserve time).
    rate_per_minute  bigint NOT NULL CHECK (rate_per_minute >= 0),
    connect_fee      bigint NOT NULL CHECK (connect_fee >= 0),
    increment_first  integer NOT NULL CHECK (increment_first >= 1),
    increment_step   integer NOT NULL CHECK (increment_step >= 1),
    -- Total seconds granted so far, and cost(granted_seconds) under that rate (§4).
    granted_seconds  bigint NOT NULL CHECK (granted_seconds >= 1),
    granted_amount   bigint NOT NULL CHECK (granted_amount >= 0),
    grants           integer NOT NULL DEFAULT 1,
    -- Sum of the charges of the call's usage events settled against it.
    used             bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'released', 'final', 'expired')),
    held             bigint GENERATED ALWAYS AS (
                         CASE WHEN status = 'open' THEN greatest(granted_amount - used, 0)
                              ELSE 0 END) STORED,
    grace_seconds    integer NOT NULL CHECK (grace_seconds >= 0),
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz,
    UNIQUE (event_source, call_id),
    CHECK ((status = 'open') = (closed_at IS NULL))
) WITH (fillfactor = 80);  -- room on each page for the settling updates (HOT)
-- The sweeper's scan: open reservations by expiry.
CREATE INDEX reservations_open_expiry ON reservations (expires_at) WHERE status = 'open';

-- The pricing rule of §4 (rating.core.pricing.cost), in SQL; numeric inside, so no
-- intermediate product can overflow.
CREATE FUNCTION reservation_cost(t bigint, per_minute bigint, connect_fee bigint,
                                 first_s integer, step_s integer) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN t <= 0 THEN 0::bigint ELSE
        (connect_fee + div(per_minute::numeric
                           * CASE WHEN t <= first_s THEN first_s
                                  ELSE first_s + div(t - first_s + step_s - 1, step_s) * step_s
                             END + 30, 60))::bigint
    END
$$;

-- The grant rule (rating.core.reservations.grant_total; a test runs both on the same
-- values): the new total of granted seconds of a reservation that has `granted` seconds
-- and `used` micro-units settled, given the account's available credit. At most `cap`
-- seconds more, and never more than available covers: the hold grows from
-- greatest(cost(granted) - used, 0) to greatest(cost(total) - used, 0), and the growth
-- is at most `available`. Returns `granted` when nothing more can be granted.
CREATE FUNCTION reservation_grant(available bigint, granted bigint, used bigint, cap bigint,
                                  per_minute bigint, connect_fee bigint,
                                  first_s integer, step_s integer) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    headroom numeric;
    billable numeric;
    covered numeric;
BEGIN
    IF available < 0 OR cap < 1 THEN
        RETURN granted;
    END IF;
    headroom := available::numeric
                + greatest(reservation_cost(granted, per_minute, connect_fee, first_s, step_s)
                           - used, 0)
                + used - connect_fee;
    IF headroom < 0 THEN
        RETURN granted;
    END IF;
    IF per_minute = 0 THEN
        covered := 2147483647;  -- rating.core.pricing.UNLIMITED_SECONDS
    ELSE
        billable := div(60 * headroom + 29, per_minute);
        covered := CASE WHEN billable < first_s THEN 0
                        ELSE first_s + div(billable - first_s, step_s) * step_s END;
    END IF;
    RETURN greatest(granted, least(granted + cap, covered))::bigint;
END $$;

-- The functions below answer (outcome, the account's available credit, the reservation
-- as jsonb: a row type would tie their callers to this table's columns).
--
-- Reserve: lock the account, return the call's reservation if it has one, else grant
-- and hold. outcome: created | existing | refused | unknown_account.
CREATE FUNCTION reservation_open(p_account text, p_source text, p_call text, p_service text,
                                 p_number text, p_direction text, p_per_minute bigint,
                                 p_connect_fee bigint, p_first integer, p_step integer,
                                 p_cap bigint, p_grace integer)
RETURNS TABLE (outcome text, available bigint, r jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    acct record;
    res reservations;
    total bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- see the header
    SELECT balance, held, currency INTO acct FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_account', NULL::bigint, NULL::jsonb;
        RETURN;
    END IF;
    SELECT * INTO res FROM reservations WHERE event_source = p_source AND call_id = p_call;
    IF FOUND THEN
        RETURN QUERY SELECT 'existing', acct.balance - acct.held, to_jsonb(res);
        RETURN;
    END IF;
    total := reservation_grant(acct.balance - acct.held, 0, 0, p_cap, p_per_minute,
                               p_connect_fee, p_first, p_step);
    IF total = 0 THEN
        RETURN QUERY SELECT 'refused', acct.balance - acct.held, NULL::jsonb;
        RETURN;
    END IF;
    INSERT INTO reservations (account_id, event_source, call_id, service, number, direction,
                              currency, rate_per_minute, connect_fee, increment_first,
                              increment_step, granted_seconds, granted_amount, grace_seconds,
                              expires_at)
    VALUES (p_account, p_source, p_call, p_service, p_number, p_direction, acct.currency,
            p_per_minute, p_connect_fee, p_first, p_step, total,
            reservation_cost(total, p_per_minute, p_connect_fee, p_first, p_step), p_grace,
            now() + (total + p_grace) * interval '1 second')
    ON CONFLICT (event_source, call_id) DO NOTHING
    RETURNING * INTO res;
    IF NOT FOUND THEN  -- the same call reserved at this moment on another account
        SELECT * INTO res FROM reservations WHERE event_source = p_source AND call_id = p_call;
        RETURN QUERY SELECT 'existing', acct.balance - acct.held, to_jsonb(res);
        RETURN;
    END IF;
    UPDATE accounts SET held = held + res.held, open_reservations = open_reservations + 1
    WHERE id = p_account;
    RETURN QUERY SELECT 'created', acct.balance - acct.held - res.held, to_jsonb(res);
END $$;

-- Extend: grant up to p_cap seconds more. outcome: extended | refused | closed |
-- unknown_reservation | unknown_account.
CREATE FUNCTION reservation_extend(p_account text, p_reservation text, p_cap bigint)
RETURNS TABLE (outcome text, available bigint, r jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    acct record;
    res reservations;
    grown reservations;
    total bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- see the header
    SELECT balance, held INTO acct FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_account', NULL::bigint, NULL::jsonb;
        RETURN;
    END IF;
    SELECT * INTO res FROM reservations
    WHERE reservation_id = p_reservation AND account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_reservation', acct.balance - acct.held, NULL::jsonb;
        RETURN;
    END IF;
    IF res.status <> 'open' THEN
        RETURN QUERY SELECT 'closed', acct.balance - acct.held, to_jsonb(res);
        RETURN;
    END IF;
    total := reservation_grant(acct.balance - acct.held, res.granted_seconds, res.used, p_cap,
                               res.rate_per_minute, res.connect_fee, res.increment_first,
                               res.increment_step);
    IF total <= res.granted_seconds THEN
        RETURN QUERY SELECT 'refused', acct.balance - acct.held, to_jsonb(res);
        RETURN;
    END IF;
    UPDATE reservations
    SET granted_seconds = total,
        granted_amount = reservation_cost(total, rate_per_minute, connect_fee,
                                          increment_first, increment_step),
        grants = grants + 1,
        expires_at = greatest(expires_at,
                              now() + (total - res.granted_seconds + grace_seconds)
                                      * interval '1 second'),
        updated_at = now()
    WHERE reservation_id = p_reservation
    RETURNING * INTO grown;
    UPDATE accounts SET held = held + (grown.held - res.held) WHERE id = p_account;
    RETURN QUERY SELECT 'extended', acct.balance - acct.held - (grown.held - res.held), to_jsonb(grown);
END $$;

-- Release: close it and free its hold. outcome: released | closed (already) |
-- unknown_reservation | unknown_account.
CREATE FUNCTION reservation_release(p_account text, p_reservation text)
RETURNS TABLE (outcome text, available bigint, r jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    acct record;
    res reservations;
    closed reservations;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- see the header
    SELECT balance, held INTO acct FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_account', NULL::bigint, NULL::jsonb;
        RETURN;
    END IF;
    SELECT * INTO res FROM reservations
    WHERE reservation_id = p_reservation AND account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_reservation', acct.balance - acct.held, NULL::jsonb;
        RETURN;
    END IF;
    IF res.status <> 'open' THEN
        RETURN QUERY SELECT 'closed', acct.balance - acct.held, to_jsonb(res);
        RETURN;
    END IF;
    UPDATE reservations SET status = 'released', closed_at = now(), updated_at = now()
    WHERE reservation_id = p_reservation
    RETURNING * INTO closed;
    UPDATE accounts SET held = held - res.held, open_reservations = open_reservations - 1
    WHERE id = p_account;
    RETURN QUERY SELECT 'released', acct.balance - acct.held + res.held, to_jsonb(closed);
END $$;

-- Expire: close the open reservations whose expires_at is at or before p_as_of, of up
-- to p_accounts accounts (only p_only when given), locked in id order first, and free
-- their holds. One row per account: how many closed and how much they held.
CREATE FUNCTION reservations_expire(p_as_of timestamptz, p_accounts integer,
                                    p_only text DEFAULT NULL)
RETURNS TABLE (account_id text, expired bigint, freed bigint, currency text)
LANGUAGE plpgsql AS $$
DECLARE
    due text[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- see the header
    due := ARRAY(SELECT DISTINCT x.account_id FROM reservations x
                 WHERE x.status = 'open' AND x.expires_at <= p_as_of
                   AND (p_only IS NULL OR x.account_id = p_only)
                 ORDER BY 1 LIMIT p_accounts);
    IF cardinality(due) = 0 THEN
        RETURN;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.id = ANY(due) ORDER BY a.id FOR UPDATE;
    RETURN QUERY
    WITH closed AS (
        UPDATE reservations x
        SET status = 'expired', closed_at = now(), updated_at = now()
        WHERE x.account_id = ANY(due) AND x.status = 'open' AND x.expires_at <= p_as_of
        RETURNING x.account_id, greatest(x.granted_amount - x.used, 0) AS freed
    ), per_account AS (
        SELECT c.account_id, count(*) AS n, sum(c.freed)::bigint AS freed
        FROM closed c GROUP BY c.account_id
    )
    UPDATE accounts a
    SET held = a.held - p.freed, open_reservations = a.open_reservations - p.n
    FROM per_account p
    WHERE a.id = p.account_id
    RETURNING a.id, p.n, p.freed, a.currency::text;
END $$;

-- An extension moves a reservation's expiry by the seconds it adds (README, "Orphans
-- expire"). 0007 set it to greatest(expires_at, now() + added + grace), which moves it
-- by almost nothing when a switch extends soon after reserving: the sweeper then closed
-- the reservation, freeing its hold, while the call could still use the whole grant, and
-- the same credit could be granted to a second call. Now the expiry is the later of the
-- old one moved by the seconds added (an early extension) and now + those seconds + the
-- grace (a late one, of a call answered after its reservation). Only the function
-- changes; the expiry of reservations already open is left as it is.
CREATE OR REPLACE FUNCTION reservation_extend(p_account text, p_reservation text, p_cap bigint)
RETURNS TABLE (outcome text, available bigint, r jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    acct record;
    res reservations;
    grown reservations;
    total bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- see 0007's header
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
        expires_at = greatest(expires_at + (total - res.granted_seconds) * interval '1 second',
                              now() + (total - res.granted_seconds + grace_seconds)
                                      * interval '1 second'),
        updated_at = now()
    WHERE reservation_id = p_reservation
    RETURNING * INTO grown;
    UPDATE accounts SET held = held + (grown.held - res.held) WHERE id = p_account;
    RETURN QUERY SELECT 'extended', acct.balance - acct.held - (grown.held - res.held), to_jsonb(grown);
END $$;

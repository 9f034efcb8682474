-- A grant covers whole increments (CONTRACT §10, the API document): the cap on one
-- grant (RATING_RESERVATION_SECONDS) now stops at the last increment boundary within
-- it, where 0007 stopped at the cap itself (a 300 s grant on a 90/60 row held 330 s).
-- When the cap ends inside the next increment, with no boundary to stop at, the cap
-- itself is granted and that increment held, as before. The same rule as
-- rating.core.reservations.grant_total; a test runs both on the same values.
CREATE OR REPLACE FUNCTION reservation_grant(available bigint, granted bigint, used bigint,
                                             cap bigint, per_minute bigint,
                                             connect_fee bigint, first_s integer,
                                             step_s integer) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    headroom numeric;
    billable numeric;
    covered numeric;
    lim numeric;
    within numeric;
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
    lim := granted::numeric + cap;
    within := CASE WHEN lim < first_s THEN 0
                   ELSE first_s + div(lim - first_s, step_s) * step_s END;
    IF within <= granted THEN
        within := lim;
    END IF;
    RETURN greatest(granted, least(within, covered))::bigint;
END $$;

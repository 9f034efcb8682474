-- Which tariff files each running engine has in force, so that `rating-engine dlq replay`
-- can wait for the engines to load a fix before it republishes what the fix cures
-- (replayed earlier, those events would only be refused again). Each engine writes its
-- row at every tariff poll; a row not written lately belongs to an engine that is gone.
CREATE TABLE tariff_loads (
    instance   text PRIMARY KEY,          -- host:pid of the engine
    in_force   text NOT NULL,             -- digest of the files of the book in force
    attempted  text NOT NULL,             -- digest of the files last tried (refused if not in force)
    seen_at    timestamptz NOT NULL DEFAULT now()
);

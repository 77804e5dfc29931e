-- migrate:up

-- A stream's resume reads each of its symbols' live ticks after an event id from here, so that
-- the rows it reads are bounded by the replay limit per symbol however sparse the symbol and
-- however old the resume point. Backfilled ticks are never replayed: they are left out of the
-- index, which keeps it small and keeps backfills from writing to it.
CREATE INDEX ticks_symbol_event_id_idx ON ticks (symbol, event_id) WHERE NOT backfilled;

-- migrate:down

DROP INDEX ticks_symbol_event_id_idx;

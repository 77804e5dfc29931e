-- migrate:up

-- Where each tick came from: the provider that delivered it (a live vendor, the history source,
-- or the simulator). Nullable and without a default, so adding it rewrites nothing.
ALTER TABLE ticks ADD COLUMN source text;

-- A vendor's 1-minute bar keeps its volume; bars made from our own ticks leave it empty.
ALTER TABLE bars ADD COLUMN volume bigint CONSTRAINT bars_volume_check CHECK (volume >= 0);

-- The fetcher's feed, one row: the live providers in order of preference, the one serving now,
-- the history source and the exchange calendar. The API serves it (market state, which tick
-- sources are failovers); the fetcher NOTIFYs `feed` when it changes.
CREATE TABLE feed (
    id             boolean     PRIMARY KEY DEFAULT true CONSTRAINT feed_one_row CHECK (id),
    chain          text[]      NOT NULL,
    active         text,
    history        text,
    calendar       text        NOT NULL,
    extended_hours boolean     NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Minutes the history source was asked for and had no bar for (no trade on its feed that minute):
-- healing asks for each once, not every pass. Rows older than the healing lookback are deleted.
CREATE TABLE heal_misses (
    symbol   text        NOT NULL CONSTRAINT heal_misses_symbol_fkey REFERENCES stocks (symbol),
    minute   timestamptz NOT NULL,
    source   text        NOT NULL,
    tried_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, minute)
);

GRANT SELECT ON feed TO stockstreamer_reader;
GRANT SELECT, INSERT, UPDATE ON feed TO stockstreamer_writer;
GRANT SELECT, INSERT, DELETE ON heal_misses TO stockstreamer_writer;

-- migrate:down

DROP TABLE heal_misses;
DROP TABLE feed;
ALTER TABLE bars DROP COLUMN volume;
ALTER TABLE ticks DROP COLUMN source;

-- migrate:up

-- Tracked stocks and their slowly-changing metadata (the original design's stock_image_urls and
-- stock_highlow tables, merged). Metadata is upserted, never deleted and re-inserted.
CREATE TABLE stocks (
    symbol              text PRIMARY KEY
                        CHECK (symbol ~ '^[A-Z][A-Z0-9]{0,9}([.-][A-Z0-9]{1,4})?$'),
    name                text,
    logo_url            text,
    week52_high         numeric CHECK (week52_high > 0),
    week52_low          numeric CHECK (week52_low > 0),
    previous_close      numeric CHECK (previous_close > 0),
    metadata_updated_at timestamptz,
    CHECK (week52_low <= week52_high)
);

-- Event ids are handed out by one writer transaction at a time, so they become visible in order
-- and a stream can resume "after id N" without missing a tick.
CREATE SEQUENCE tick_event_id_seq AS bigint;

CREATE TABLE ticks (
    symbol   text        NOT NULL REFERENCES stocks (symbol),
    ts       timestamptz NOT NULL,                 -- the provider's time of the tick
    price    numeric     NOT NULL CHECK (price > 0),
    volume   bigint      CHECK (volume >= 0),
    event_id bigint      NOT NULL DEFAULT nextval('tick_event_id_seq'),
    -- history filled in after the fact (backfill): stored and charted, but never pushed to
    -- live stream clients as if it had just happened
    backfilled boolean   NOT NULL DEFAULT false,
    -- a tick delivered twice is stored once; also serves "latest per symbol" and
    -- "one symbol over a window" (index scans on (symbol, ts), forwards or backwards)
    PRIMARY KEY (symbol, ts)
);
ALTER SEQUENCE tick_event_id_seq OWNED BY ticks.event_id;

-- serves "every tick after event id N" (stream resume)
CREATE UNIQUE INDEX ticks_event_id_key ON ticks (event_id);

-- -- Roles ------------------------------------------------------------------------------------
-- Group roles (NOLOGIN): deployments create login users IN ROLE one of them, or services switch
-- to them with STOCKSTREAMER_*_DB_ROLE. Roles are cluster-wide, so creation is idempotent.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stockstreamer_writer') THEN
        CREATE ROLE stockstreamer_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stockstreamer_reader') THEN
        CREATE ROLE stockstreamer_reader NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO stockstreamer_writer, stockstreamer_reader;
GRANT SELECT ON stocks, ticks TO stockstreamer_reader;
GRANT SELECT, INSERT, UPDATE ON stocks, ticks TO stockstreamer_writer;
GRANT USAGE ON SEQUENCE tick_event_id_seq TO stockstreamer_writer;

-- migrate:down

REVOKE ALL ON stocks, ticks FROM stockstreamer_writer, stockstreamer_reader;
REVOKE ALL ON SEQUENCE tick_event_id_seq FROM stockstreamer_writer;
REVOKE USAGE ON SCHEMA public FROM stockstreamer_writer, stockstreamer_reader;
DROP TABLE ticks;
DROP TABLE stocks;
-- the roles are left in place: they are cluster-wide and may hold grants in other databases

-- migrate:up

-- -- Watchlist ---------------------------------------------------------------------------------
-- The symbols the stack tracks, and where each is on its way in. The fetcher follows it live
-- (NOTIFY watchlist, payload: the symbol): the API adds and removes rows, the fetcher sets their
-- state. `origin` says who owns a row: `config` rows follow STOCKSTREAMER_SYMBOLS (the fetcher
-- adds and removes them at start, and they cannot be removed through the API), `api` rows were
-- added at run time and stay until removed. A symbol in neither is not shown; its data stays
-- until retention drops it, so adding it again brings its history back.
CREATE TABLE watchlist (
    symbol       text        PRIMARY KEY
                 CHECK (symbol ~ '^[A-Z][A-Z0-9]{0,9}([.-][A-Z0-9]{1,4})?$'),
    origin       text        NOT NULL CHECK (origin IN ('config', 'api')),
    state        text        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'backfilling', 'live', 'rejected')),
    progress     real        CHECK (progress BETWEEN 0 AND 1),  -- backfilling: share done
    reason       text        CHECK (length(reason) <= 500),     -- rejected: the vendor's reason
    requested_at timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- What was tracked before the watchlist existed stays tracked, as configuration.
INSERT INTO watchlist (symbol, origin, state)
SELECT symbol, 'config', 'live' FROM stocks;

-- -- Alerts ----------------------------------------------------------------------------------
-- A price alert. `line` is the price it watches (for change_pct: the previous close moved by
-- `value` percent, set by the alerts service); `armed` is false from a firing until the price
-- has come back past the line by STOCKSTREAMER_ALERT_REARM_PCT. Removed alerts keep their row
-- (deleted_at) so that their firings and deliveries stay readable to the alerts service.
CREATE TABLE alerts (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    symbol     text        NOT NULL
               CHECK (symbol ~ '^[A-Z][A-Z0-9]{0,9}([.-][A-Z0-9]{1,4})?$'),
    condition  text        NOT NULL CHECK (condition IN ('above', 'below', 'change_pct')),
    value      double precision NOT NULL
               CHECK (value BETWEEN -1e9 AND 1e9
                      AND (condition = 'change_pct' OR value > 0)),
    channels   text[]      NOT NULL CHECK (cardinality(channels) BETWEEN 1 AND 10),
    note       text        CHECK (length(note) <= 500),
    armed      boolean     NOT NULL DEFAULT true,
    fired      integer     NOT NULL DEFAULT 0,  -- firings so far
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
-- the alerts in force, per symbol (what the service loads and the API counts)
CREATE INDEX alerts_active_symbol ON alerts (symbol) WHERE deleted_at IS NULL;

-- One row per firing: its id is the stable id sent with every delivery of it.
CREATE TABLE alert_firings (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id      bigint      NOT NULL REFERENCES alerts (id),
    price         double precision NOT NULL,
    line          double precision NOT NULL,  -- the price the alert watched when it fired
    tick_event_id bigint,                     -- the tick that fired it (null: a quote at arming)
    tick_ts       timestamptz NOT NULL,       -- that tick's time
    fired_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_firings_alert ON alert_firings (alert_id, id);

-- Every delivery attempt of a firing to one channel.
CREATE TABLE alert_deliveries (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    firing_id bigint      NOT NULL REFERENCES alert_firings (id),
    channel   text        NOT NULL,
    attempt   integer     NOT NULL CHECK (attempt >= 1),
    result    text        NOT NULL CHECK (result IN ('delivered', 'failed', 'abandoned')),
    detail    text        CHECK (length(detail) <= 500),  -- never a channel's URL
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_deliveries_firing ON alert_deliveries (firing_id, channel);

-- The channel names the alerts service was configured with (its secret file holds their URLs,
-- which never come here): what the API accepts in `channels`, besides the built-in `browser`.
CREATE TABLE alert_channels (
    name text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,31}$')
);

-- The alerts service's resume point, one row: the last tick event id it has evaluated.
CREATE TABLE alert_cursor (
    id            boolean     PRIMARY KEY DEFAULT true CONSTRAINT alert_cursor_one_row CHECK (id),
    last_event_id bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- -- Roles ----------------------------------------------------------------------------------
-- stockstreamer_editor: the API's writes (the watchlist, alerts), on top of everything the
-- reader reads. stockstreamer_alerter: the alerts service's, which reads ticks and writes
-- nothing but alert state.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stockstreamer_editor') THEN
        CREATE ROLE stockstreamer_editor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stockstreamer_alerter') THEN
        CREATE ROLE stockstreamer_alerter NOLOGIN;
    END IF;
END
$$;
GRANT stockstreamer_reader TO stockstreamer_editor;
GRANT USAGE ON SCHEMA public TO stockstreamer_alerter;

GRANT SELECT ON watchlist, alerts, alert_firings, alert_deliveries, alert_channels
    TO stockstreamer_reader;
GRANT INSERT, UPDATE, DELETE ON watchlist TO stockstreamer_editor;
GRANT INSERT ON alerts TO stockstreamer_editor;
GRANT UPDATE (deleted_at) ON alerts TO stockstreamer_editor;

GRANT SELECT, INSERT, UPDATE, DELETE ON watchlist TO stockstreamer_writer;

GRANT SELECT ON stocks, ticks, watchlist, feed TO stockstreamer_alerter;
GRANT SELECT ON alerts TO stockstreamer_alerter;
GRANT UPDATE (armed, fired) ON alerts TO stockstreamer_alerter;
GRANT SELECT, INSERT ON alert_firings, alert_deliveries TO stockstreamer_alerter;
GRANT SELECT, INSERT, DELETE ON alert_channels TO stockstreamer_alerter;
GRANT SELECT, INSERT, UPDATE ON alert_cursor TO stockstreamer_alerter;

-- migrate:down

REVOKE ALL ON stocks, ticks, watchlist, feed FROM stockstreamer_alerter;
REVOKE USAGE ON SCHEMA public FROM stockstreamer_alerter;
DROP TABLE alert_cursor;
DROP TABLE alert_channels;
DROP TABLE alert_deliveries;
DROP TABLE alert_firings;
DROP TABLE alerts;
DROP TABLE watchlist;
REVOKE stockstreamer_reader FROM stockstreamer_editor;

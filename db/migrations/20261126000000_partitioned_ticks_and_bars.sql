-- migrate:up

-- Ticks become a table partitioned by day on `ts`, so retention drops whole partitions instead of
-- deleting rows; bars (open/high/low/close per symbol and time bucket, at several widths) are kept
-- beside them so that a history read costs about the same whatever its window. Prices become
-- double precision: every vendor price (at most ~12 significant digits) survives the round trip
-- exactly, nothing adds or multiplies stored prices (bars pick minima, maxima, firsts and lasts),
-- and it writes measurably faster than numeric (see docs/architecture.md).

-- -- Ticks: the existing table becomes the first partition, in place (no copy) ---------------
ALTER TABLE ticks RENAME TO ticks_legacy;
ALTER INDEX ticks_pkey RENAME TO ticks_legacy_pkey;
DROP INDEX ticks_event_id_key;  -- rebuilt below as a partition of the partitioned index
ALTER TABLE ticks_legacy
    ALTER COLUMN price TYPE double precision,
    DROP CONSTRAINT ticks_price_check,
    ADD CONSTRAINT ticks_price_check CHECK (price > 0 AND price < 'Infinity');

CREATE TABLE ticks (
    symbol     text             NOT NULL
               CONSTRAINT ticks_symbol_fkey REFERENCES stocks (symbol),
    ts         timestamptz      NOT NULL,  -- the provider's time of the tick
    -- NaN compares greater than every number in PostgreSQL: `< 'Infinity'` keeps it out too
    price      double precision NOT NULL
               CONSTRAINT ticks_price_check CHECK (price > 0 AND price < 'Infinity'),
    volume     bigint           CONSTRAINT ticks_volume_check CHECK (volume >= 0),
    event_id   bigint           NOT NULL DEFAULT nextval('tick_event_id_seq'),
    backfilled boolean          NOT NULL DEFAULT false,
    -- a tick delivered twice is stored once; history reads come from the index alone
    PRIMARY KEY (symbol, ts) INCLUDE (price)
) PARTITION BY RANGE (ts);
ALTER SEQUENCE tick_event_id_seq OWNED BY ticks.event_id;
-- "every tick after event id N" (stream resume); unique by construction (one sequence)
CREATE INDEX ticks_event_id_idx ON ticks (event_id);

DO $$
DECLARE
    newest timestamptz;
BEGIN
    SELECT max(ts) INTO newest FROM ticks_legacy;
    IF newest IS NULL THEN
        DROP TABLE ticks_legacy;  -- a new database: daily partitions only
    ELSE
        -- Everything stored so far stays where it is, in one partition that retention drops
        -- as a whole once its newest day has expired.
        EXECUTE format(
            'ALTER TABLE ticks ATTACH PARTITION ticks_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
            date_trunc('day', greatest(newest, now()), 'UTC') + interval '1 day'
        );
    END IF;
END
$$;

-- -- Bars ------------------------------------------------------------------------------------
-- One row per symbol and bucket of `width_s` seconds (aligned to the Unix epoch, so days are UTC
-- days). `low_ts` and `high_ts` are the earliest times at the low and at the high, so a chart
-- keeps spikes where they happened; `open_ts` lets a late tick correct the open.
CREATE TABLE bars (
    width_s  integer          NOT NULL,
    symbol   text             NOT NULL,
    bucket   timestamptz      NOT NULL,
    open     double precision NOT NULL,
    high     double precision NOT NULL,
    low      double precision NOT NULL,
    close    double precision NOT NULL,
    ticks    bigint           NOT NULL CHECK (ticks > 0),
    open_ts  timestamptz      NOT NULL,
    high_ts  timestamptz      NOT NULL,
    low_ts   timestamptz      NOT NULL,
    close_ts timestamptz      NOT NULL,
    PRIMARY KEY (width_s, symbol, bucket)
) PARTITION BY LIST (width_s);

-- Levels kept as long as raw ticks (10 s), as long as minute bars (1 to 30 min), and forever.
CREATE TABLE bars_10s PARTITION OF bars FOR VALUES IN (10) PARTITION BY RANGE (bucket);
CREATE TABLE bars_1m PARTITION OF bars FOR VALUES IN (60) PARTITION BY RANGE (bucket);
CREATE TABLE bars_2m PARTITION OF bars FOR VALUES IN (120) PARTITION BY RANGE (bucket);
CREATE TABLE bars_5m PARTITION OF bars FOR VALUES IN (300) PARTITION BY RANGE (bucket);
CREATE TABLE bars_15m PARTITION OF bars FOR VALUES IN (900) PARTITION BY RANGE (bucket);
CREATE TABLE bars_30m PARTITION OF bars FOR VALUES IN (1800) PARTITION BY RANGE (bucket);
CREATE TABLE bars_1h PARTITION OF bars FOR VALUES IN (3600);
CREATE TABLE bars_4h PARTITION OF bars FOR VALUES IN (14400);
CREATE TABLE bars_1d PARTITION OF bars FOR VALUES IN (86400);

-- -- Partitions and retention ----------------------------------------------------------------
-- Which tables are partitioned by time, how wide a partition is, how long data is kept (set by
-- the fetcher from STOCKSTREAMER_RETENTION*), and `horizon`: nothing older is stored raw any more
-- (it only moves forward, so a longer retention set later never claims dropped data back).
CREATE TABLE partition_policy (
    parent  text        PRIMARY KEY,
    step    interval    NOT NULL CHECK (step IN ('1 day', '1 month')),
    keep    interval    NOT NULL CHECK (keep >= interval '1 day'),
    horizon timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO partition_policy (parent, step, keep) VALUES
    ('ticks', '1 day', '30 days'),
    ('bars_10s', '1 day', '30 days'),
    ('bars_1m', '1 month', '400 days'),
    ('bars_2m', '1 month', '400 days'),
    ('bars_5m', '1 month', '400 days'),
    ('bars_15m', '1 month', '400 days'),
    ('bars_30m', '1 month', '400 days');

-- The partition of `parent` that holds time `at`, created if missing; true when created.
-- DDL cannot take parameters: the name and bounds are derived here from a date, never from input
-- text, and quoted with format(%I/%L). Runs as its owner, so the writer role needs no DDL rights.
CREATE FUNCTION stockstreamer_ensure_partition(target text, at timestamptz)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    span   interval;
    lower  timestamptz;
    name   text;
    schema text;
BEGIN
    SELECT p.step, c.relnamespace::regnamespace::text INTO span, schema
    FROM partition_policy p JOIN pg_class c ON c.oid = p.parent::regclass
    WHERE p.parent = target;
    IF span IS NULL THEN
        RAISE EXCEPTION 'not a time-partitioned table: %', target;
    END IF;
    IF span = interval '1 month' THEN
        lower := date_trunc('month', at, 'UTC');
        name := target || '_p' || to_char(lower AT TIME ZONE 'UTC', 'YYYYMM');
    ELSE
        lower := date_trunc('day', at, 'UTC');
        name := target || '_p' || to_char(lower AT TIME ZONE 'UTC', 'YYYYMMDD');
    END IF;
    IF to_regclass(format('%I.%I', schema, name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                       schema, name, schema, target, lower, lower + span);
    EXCEPTION WHEN invalid_object_definition THEN
        RETURN false;  -- already covered (by the partition that holds the pre-partitioning rows)
    END;
    RETURN true;
END
$$;

-- Drops every partition whose newest possible row is older than its table's retention allows,
-- after storing the new retention; returns the names dropped. Raw ticks go this way only.
CREATE FUNCTION stockstreamer_apply_retention(raw interval, minute interval)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    policy record;
    part   record;
BEGIN
    UPDATE partition_policy
    SET keep = CASE WHEN step = interval '1 day' THEN raw ELSE minute END;
    FOR policy IN SELECT * FROM partition_policy ORDER BY parent LOOP
        UPDATE partition_policy SET horizon = greatest(horizon, now() - policy.keep)
        WHERE parent = policy.parent;
        FOR part IN
            SELECT c.relnamespace::regnamespace::text AS schema, c.relname,
                   substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')
                       ::timestamptz AS upper
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = policy.parent::regclass
        LOOP
            IF part.upper <= now() - policy.keep THEN
                EXECUTE format('DROP TABLE %I.%I', part.schema, part.relname);
                RETURN NEXT part.relname;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION stockstreamer_ensure_partition(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION stockstreamer_apply_retention(interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION stockstreamer_ensure_partition(text, timestamptz)
    TO stockstreamer_writer;
GRANT EXECUTE ON FUNCTION stockstreamer_apply_retention(interval, interval)
    TO stockstreamer_writer;

GRANT SELECT ON ticks, bars, partition_policy TO stockstreamer_reader;
GRANT SELECT, INSERT ON ticks TO stockstreamer_writer;
GRANT SELECT, INSERT, UPDATE ON bars TO stockstreamer_writer;
GRANT SELECT ON partition_policy TO stockstreamer_writer;

-- -- Bars for what is already stored ---------------------------------------------------------
DO $$
DECLARE
    d timestamptz;
BEGIN
    FOR d IN
        SELECT DISTINCT date_trunc('month', ts, 'UTC') FROM ticks
    LOOP
        PERFORM stockstreamer_ensure_partition(p, d)
        FROM unnest(ARRAY['bars_1m', 'bars_2m', 'bars_5m', 'bars_15m', 'bars_30m']) AS p;
    END LOOP;
    FOR d IN
        SELECT DISTINCT date_trunc('day', ts, 'UTC') FROM ticks
    LOOP
        PERFORM stockstreamer_ensure_partition('bars_10s', d);
    END LOOP;
END
$$;

-- 10 s bars from the ticks, then every wider level from the 10 s bars (far fewer rows).
INSERT INTO bars (width_s, symbol, bucket, open, high, low, close, ticks,
                  open_ts, high_ts, low_ts, close_ts)
SELECT 10, symbol, date_bin('10 seconds', ts, 'epoch'),
       (array_agg(price ORDER BY ts))[1], max(price), min(price),
       (array_agg(price ORDER BY ts DESC))[1], count(*),
       min(ts), (array_agg(ts ORDER BY price DESC, ts))[1],
       (array_agg(ts ORDER BY price, ts))[1], max(ts)
FROM ticks
GROUP BY 2, 3;

INSERT INTO bars (width_s, symbol, bucket, open, high, low, close, ticks,
                  open_ts, high_ts, low_ts, close_ts)
SELECT w.width_s, b.symbol, date_bin(make_interval(secs => w.width_s), b.bucket, 'epoch'),
       (array_agg(b.open ORDER BY b.open_ts))[1], max(b.high), min(b.low),
       (array_agg(b.close ORDER BY b.close_ts DESC))[1], sum(b.ticks),
       min(b.open_ts), (array_agg(b.high_ts ORDER BY b.high DESC, b.high_ts))[1],
       (array_agg(b.low_ts ORDER BY b.low, b.low_ts))[1], max(b.close_ts)
FROM bars b
CROSS JOIN (VALUES (60), (120), (300), (900), (1800), (3600), (14400), (86400)) AS w(width_s)
WHERE b.width_s = 10
GROUP BY 1, 2, 3;

-- migrate:down

-- Back to one plain table with numeric prices; bars and retention state are dropped (they are
-- derived from ticks, except history older than the raw retention, which has no ticks to return).
CREATE TABLE ticks_plain (
    symbol     text        NOT NULL REFERENCES stocks (symbol),
    ts         timestamptz NOT NULL,
    price      numeric     NOT NULL CHECK (price > 0),
    volume     bigint      CHECK (volume >= 0),
    event_id   bigint      NOT NULL DEFAULT nextval('tick_event_id_seq'),
    backfilled boolean     NOT NULL DEFAULT false
);
INSERT INTO ticks_plain (symbol, ts, price, volume, event_id, backfilled)
SELECT symbol, ts, price::numeric, volume, event_id, backfilled FROM ticks;
ALTER SEQUENCE tick_event_id_seq OWNED BY ticks_plain.event_id;
DROP TABLE ticks;
ALTER TABLE ticks_plain RENAME TO ticks;
ALTER TABLE ticks RENAME CONSTRAINT ticks_plain_symbol_fkey TO ticks_symbol_fkey;
ALTER TABLE ticks RENAME CONSTRAINT ticks_plain_price_check TO ticks_price_check;
ALTER TABLE ticks RENAME CONSTRAINT ticks_plain_volume_check TO ticks_volume_check;
ALTER TABLE ticks ADD CONSTRAINT ticks_pkey PRIMARY KEY (symbol, ts) INCLUDE (price);
CREATE UNIQUE INDEX ticks_event_id_key ON ticks (event_id);

DROP FUNCTION stockstreamer_apply_retention(interval, interval);
DROP FUNCTION stockstreamer_ensure_partition(text, timestamptz);
DROP TABLE partition_policy;
DROP TABLE bars;

GRANT SELECT ON ticks TO stockstreamer_reader;
GRANT SELECT, INSERT, UPDATE ON ticks TO stockstreamer_writer;

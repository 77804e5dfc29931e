"""The fetcher's SQL, as named, parameterised statements.

Bars are written three ways, all to the same result: accumulated from the ticks a statement
inserted (any batch), accumulated from bars computed in memory (batches copied in without
conflicts, see rollup.py), and rebuilt from the next finer level (history older than the raw
retention, which arrives as minute bars). The aggregate fragments below are constants, shared
so that the three ways cannot drift apart.
"""

from __future__ import annotations

BAR_COLUMNS = (
    "width_s, symbol, bucket, open, high, low, close, ticks, open_ts, high_ts, low_ts, close_ts"
)

# A bar of the rows (symbol, ts, price) of one group; ties at the high or low go to the earliest.
_BAR_OF_TICKS = """
    (array_agg(price ORDER BY ts))[1] AS open, max(price) AS high, min(price) AS low,
    (array_agg(price ORDER BY ts DESC))[1] AS close, count(*) AS ticks,
    min(ts) AS open_ts, (array_agg(ts ORDER BY price DESC, ts))[1] AS high_ts,
    (array_agg(ts ORDER BY price, ts))[1] AS low_ts, max(ts) AS close_ts"""

# A bar of the bars of one group (narrower buckets inside a wider one).
_BAR_OF_BARS = """
    (array_agg(open ORDER BY open_ts))[1], max(high), min(low),
    (array_agg(close ORDER BY close_ts DESC))[1], sum(ticks)::bigint,
    min(open_ts), (array_agg(high_ts ORDER BY high DESC, high_ts))[1],
    (array_agg(low_ts ORDER BY low, low_ts))[1], max(close_ts)"""

# Merging new ticks' bar into a stored one; exact because a tick is inserted (and counted) once.
_ACCUMULATE = """
ON CONFLICT (width_s, symbol, bucket) DO UPDATE SET
    open = CASE WHEN excluded.open_ts < b.open_ts THEN excluded.open ELSE b.open END,
    open_ts = least(b.open_ts, excluded.open_ts),
    high = greatest(b.high, excluded.high),
    high_ts = CASE WHEN excluded.high > b.high THEN excluded.high_ts
                   WHEN excluded.high < b.high THEN b.high_ts
                   ELSE least(b.high_ts, excluded.high_ts) END,
    low = least(b.low, excluded.low),
    low_ts = CASE WHEN excluded.low < b.low THEN excluded.low_ts
                  WHEN excluded.low > b.low THEN b.low_ts
                  ELSE least(b.low_ts, excluded.low_ts) END,
    close = CASE WHEN excluded.close_ts > b.close_ts THEN excluded.close ELSE b.close END,
    close_ts = greatest(b.close_ts, excluded.close_ts),
    ticks = b.ticks + excluded.ticks"""

# Ticks, then their bars at every level, in one statement: 10 s bars from the ticks actually
# inserted (a duplicate is skipped, so never counted twice), wider levels ($6: their widths) from
# those. $5 marks backfilled history; $7 is each tick's source. The result says what was new, per
# symbol.
WRITE_TICKS = f"""
WITH ins AS (
    INSERT INTO ticks (symbol, ts, price, volume, backfilled, source)
    SELECT s, t, p, v, $5, src
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::bigint[], $7::text[])
        AS u(s, t, p, v, src)
    ON CONFLICT (symbol, ts) DO NOTHING
    RETURNING symbol, ts, price, event_id
), fine AS (
    SELECT 10 AS width_s, symbol, date_bin('10 seconds', ts, 'epoch') AS bucket, {_BAR_OF_TICKS}
    FROM ins
    GROUP BY 2, 3
), wide AS (
    SELECT w.width_s, symbol, date_bin(make_interval(secs => w.width_s), bucket, 'epoch'),
           {_BAR_OF_BARS}
    FROM fine CROSS JOIN unnest($6::int[]) AS w(width_s)
    GROUP BY 1, 2, 3
), merged AS (
    INSERT INTO bars AS b ({BAR_COLUMNS})
    SELECT * FROM fine UNION ALL SELECT * FROM wide
    {_ACCUMULATE}
)
SELECT symbol, count(*) AS inserted, max(event_id) AS max_event_id,
       min(ts) AS first_ts, max(ts) AS last_ts
FROM ins
GROUP BY symbol
"""

# Bars computed in memory (rollup.py) for ticks copied in by the same transaction.
ACCUMULATE_BARS = f"""
INSERT INTO bars AS b ({BAR_COLUMNS})
SELECT * FROM unnest($1::int[], $2::text[], $3::timestamptz[], $4::float8[], $5::float8[],
                     $6::float8[], $7::float8[], $8::bigint[], $9::timestamptz[],
                     $10::timestamptz[], $11::timestamptz[], $12::timestamptz[])
{_ACCUMULATE}
"""

# The event id the copy-in just gave its last row (ids come from one sequence, in row order).
LAST_EVENT_ID = "SELECT currval('tick_event_id_seq')"

# History older than the raw retention: minute bars only, each stored once (a minute already
# there is final), for $4 = the minute level's width. Returns the minutes that were new.
INSERT_MINUTE_BARS = f"""
WITH input AS (
    SELECT DISTINCT ON (symbol, ts) *
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[]) AS u(symbol, ts, price)
)
INSERT INTO bars ({BAR_COLUMNS})
SELECT $4::int, symbol, date_bin(make_interval(secs => $4::int), ts, 'epoch'), {_BAR_OF_TICKS}
FROM input
GROUP BY 2, 3
ON CONFLICT (width_s, symbol, bucket) DO NOTHING
RETURNING symbol, bucket, ticks
"""

# Vendor minute bars ($1-$12: symbol, start, open, high, low, close, ticks, the times of the
# open, high, low and close, volume), each stored once: a minute already stored is final. The
# backfilled ticks they are drawn with ($13-$17: symbol, time, price, volume, source; given only
# inside the raw retention) are stored for the minutes that were new, with their 10 s bars. Wider
# levels are rebuilt from the minute bars afterwards (REBUILD_BARS). The result has one row per
# symbol with new minutes (their count and first and last start) and one per symbol with new ticks.
WRITE_BARS = f"""
WITH new AS (
    INSERT INTO bars ({BAR_COLUMNS}, volume)
    SELECT 60, * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[],
                             $5::float8[], $6::float8[], $7::bigint[], $8::timestamptz[],
                             $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
                             $12::bigint[])
    ON CONFLICT (width_s, symbol, bucket) DO NOTHING
    RETURNING symbol, bucket
), ins AS (
    INSERT INTO ticks (symbol, ts, price, volume, backfilled, source)
    SELECT u.symbol, u.ts, u.price, u.volume, true, u.source
    FROM unnest($13::text[], $14::timestamptz[], $15::float8[], $16::bigint[], $17::text[])
        AS u(symbol, ts, price, volume, source)
    JOIN new ON new.symbol = u.symbol AND new.bucket = date_bin('1 minute', u.ts, 'epoch')
    ON CONFLICT (symbol, ts) DO NOTHING
    RETURNING symbol, ts, price
), fine AS (
    SELECT 10 AS width_s, symbol, date_bin('10 seconds', ts, 'epoch') AS bucket, {_BAR_OF_TICKS}
    FROM ins
    GROUP BY 2, 3
), merged AS (
    INSERT INTO bars AS b ({BAR_COLUMNS})
    SELECT * FROM fine
    {_ACCUMULATE}
)
SELECT symbol, count(*) AS bars, min(bucket) AS first, max(bucket) AS last, 0::bigint AS ticks
FROM new GROUP BY symbol
UNION ALL
SELECT symbol, 0, NULL, NULL, count(*) FROM ins GROUP BY symbol
"""

# The $1-second bars of symbols $3 from $4 to $5, rebuilt from the $2-second bars inside them;
# their volume is the vendor volume of the minutes inside (bars of our own ticks have none).
REBUILD_BARS = f"""
INSERT INTO bars AS b ({BAR_COLUMNS}, volume)
SELECT $1::int, symbol, date_bin(make_interval(secs => $1::int), bucket, 'epoch'), {_BAR_OF_BARS},
       sum(volume)::bigint
FROM bars
WHERE width_s = $2::int AND symbol = ANY($3::text[])
  AND bucket >= date_bin(make_interval(secs => $1::int), $4::timestamptz, 'epoch')
  AND bucket < date_bin(make_interval(secs => $1::int), $5::timestamptz, 'epoch')
               + make_interval(secs => $1::int)
GROUP BY 2, 3
ON CONFLICT (width_s, symbol, bucket) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    ticks = excluded.ticks, open_ts = excluded.open_ts, high_ts = excluded.high_ts,
    low_ts = excluded.low_ts, close_ts = excluded.close_ts, volume = excluded.volume
"""

# Each symbol's newest stored tick: a copy-in of later ticks cannot conflict with anything stored;
# and its source, to tell when the live source changes.
NEWEST_TICKS = """
SELECT s AS symbol, t.ts AS newest, t.source
FROM unnest($1::text[]) AS s
LEFT JOIN LATERAL (
    SELECT ts, source FROM ticks WHERE symbol = s ORDER BY ts DESC LIMIT 1
) t ON true
"""

# -- Partitions and retention (functions created by the migrations, see db/migrations) ---------
ENSURE_PARTITION = "SELECT stockstreamer_ensure_partition($1, $2)"
# Retention as the owner set it in partition_policy: the function takes no arguments.
APPLY_RETENTION = "SELECT stockstreamer_apply_retention() AS dropped"
# Times before which raw ticks (and before which minute bars) are no longer kept.
CUTOFFS = """
SELECT parent, greatest(horizon, now() - keep) AS cutoff FROM partition_policy
WHERE parent IN ('ticks', 'bars_1m')
"""

ENSURE_STOCKS = """
INSERT INTO stocks (symbol)
SELECT unnest($1::text[])
ON CONFLICT (symbol) DO NOTHING
"""

NOTIFY = "SELECT pg_notify($1, $2)"

# Upserts return the symbols whose values changed, so only real changes are announced.
UPSERT_PROFILES = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS t(symbol, name, logo_url)
), changed AS (
    SELECT i.symbol FROM input i JOIN stocks s USING (symbol)
    WHERE (s.name, s.logo_url) IS DISTINCT FROM (i.name, i.logo_url)
), upserted AS (
    INSERT INTO stocks (symbol, name, logo_url, metadata_updated_at)
    SELECT symbol, name, logo_url, now() FROM input
    ON CONFLICT (symbol) DO UPDATE
        SET name = EXCLUDED.name,
            logo_url = EXCLUDED.logo_url,
            metadata_updated_at = EXCLUDED.metadata_updated_at
)
SELECT symbol FROM changed
"""

UPSERT_WEEK52 = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::numeric[], $3::numeric[], $4::numeric[])
        AS t(symbol, week52_high, week52_low, previous_close)
), changed AS (
    SELECT i.symbol FROM input i JOIN stocks s USING (symbol)
    WHERE (s.week52_high, s.week52_low, s.previous_close)
        IS DISTINCT FROM (i.week52_high, i.week52_low, i.previous_close)
), upserted AS (
    INSERT INTO stocks (symbol, week52_high, week52_low, previous_close, metadata_updated_at)
    SELECT symbol, week52_high, week52_low, previous_close, now() FROM input
    ON CONFLICT (symbol) DO UPDATE
        SET week52_high = EXCLUDED.week52_high,
            week52_low = EXCLUDED.week52_low,
            previous_close = COALESCE(EXCLUDED.previous_close, stocks.previous_close),
            metadata_updated_at = EXCLUDED.metadata_updated_at
)
SELECT symbol FROM changed
"""

# Where each symbol's stored history ends, ignoring anything from this run onwards: its newest
# raw tick, or when raw ticks have all expired, the close of its newest minute bar. A backwards
# index probe or two per symbol, however much is stored.
LAST_TICK_BEFORE = """
SELECT s AS symbol,
       coalesce(
           (SELECT max(ts) FROM ticks WHERE symbol = s AND ts < $2),
           (SELECT max(close_ts) FROM bars
            WHERE width_s = 60 AND symbol = s AND bucket < $2 AND close_ts < $2)
       ) AS last_ts
FROM unnest($1::text[]) AS s
"""

# -- Healing -----------------------------------------------------------------------------------
# The minutes of symbols $1 in the open periods [$2[i], $3[i]) (whole minutes) that have no minute
# bar and that the history source was not already asked for in vain (heal_misses). Each period's
# stored minutes are counted first, from the primary key alone; only periods that come up short
# are expanded minute by minute, so a day without gaps costs one index range count per symbol and
# period. A miss is counted only while its minute has no bar, so the two counts never overlap.
MISSING_MINUTES = """
WITH periods AS (
    SELECT sym, first, stop
    FROM unnest($1::text[]) AS sym
    CROSS JOIN unnest($2::timestamptz[], $3::timestamptz[]) AS p(first, stop)
), short AS (
    SELECT p.sym, p.first, p.stop
    FROM periods p
    WHERE (SELECT count(*) FROM bars b
           WHERE b.width_s = 60 AND b.symbol = p.sym AND b.bucket >= p.first AND b.bucket < p.stop)
        + (SELECT count(*) FROM heal_misses m
           WHERE m.symbol = p.sym AND m.minute >= p.first AND m.minute < p.stop
             AND NOT EXISTS (SELECT 1 FROM bars b
                             WHERE b.width_s = 60 AND b.symbol = m.symbol AND b.bucket = m.minute))
        < extract(epoch FROM p.stop - p.first) / 60
)
SELECT s.sym AS symbol, g.minute
FROM short s
CROSS JOIN LATERAL generate_series(s.first, s.stop - interval '1 minute', interval '1 minute')
    AS g(minute)
WHERE NOT EXISTS (SELECT 1 FROM bars b
                  WHERE b.width_s = 60 AND b.symbol = s.sym AND b.bucket = g.minute)
  AND NOT EXISTS (SELECT 1 FROM heal_misses m WHERE m.symbol = s.sym AND m.minute = g.minute)
ORDER BY 1, 2
"""

# Minutes ($1 symbols, $2 minutes) the history source ($3) had no bar for: not asked for again.
RECORD_MISSES = """
INSERT INTO heal_misses (symbol, minute, source)
SELECT *, $3 FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT (symbol, minute) DO NOTHING
"""

# Misses older than healing looks back ($1) are of no more use.
FORGET_MISSES = "DELETE FROM heal_misses WHERE minute < $1"

"""The API's SQL as named, parameterised statements: reads, and the watchlist and alert writes."""

from __future__ import annotations

# Times leave as epoch milliseconds, floored, so a point never rounds into the next millisecond.

SELECT_ONE = "SELECT 1"

# What is shown is what is tracked: the watchlist. A symbol's data outlives its row there (until
# retention drops it), but an untracked symbol is answered for as an unknown one.
ALL_SYMBOLS = "SELECT symbol FROM watchlist ORDER BY symbol"

KNOWN_SYMBOLS = "SELECT symbol FROM watchlist WHERE symbol = ANY($1::text[])"

# The watchlist's stocks with their state, metadata (none yet for a new symbol), last tick and its
# source; the change reference is the previous close when the provider gives one, else the first
# tick of the last tick's trading day in exchange time (America/New_York). A source is a failover
# when the feed's chain has it, but not first. The last tick is one probe of the primary key per
# symbol (and one heap fetch, for its source). $1: symbols, or NULL for all.
STOCKS = """
SELECT w.symbol, w.state, w.progress, w.reason, w.origin,
       s.name, s.logo_url, s.week52_high, s.week52_low, s.previous_close,
       s.metadata_updated_at, l.price AS last_price, l.ts AS last_ts, l.source,
       coalesce(l.source = ANY(f.chain) AND l.source <> f.chain[1], false) AS failover,
       COALESCE(s.previous_close, o.price) AS reference
FROM watchlist w
LEFT JOIN stocks s ON s.symbol = w.symbol
LEFT JOIN feed f ON true
LEFT JOIN LATERAL (
    SELECT t.price, t.ts, t.source FROM ticks t WHERE t.symbol = w.symbol ORDER BY t.ts DESC LIMIT 1
) l ON true
LEFT JOIN LATERAL (
    SELECT t.price FROM ticks t
    WHERE s.previous_close IS NULL AND t.symbol = w.symbol
      AND t.ts >= date_trunc('day', l.ts, 'America/New_York')
    ORDER BY t.ts LIMIT 1
) o ON true
WHERE $1::text[] IS NULL OR w.symbol = ANY($1::text[])
ORDER BY w.symbol
"""

# The fetcher's feed (one row, or none before the fetcher first started).
FEED = "SELECT chain, active, history, calendar, extended_hours FROM feed"

METADATA = """
SELECT w.symbol, s.logo_url, s.week52_high, s.week52_low, s.metadata_updated_at AS updated_at
FROM watchlist w LEFT JOIN stocks s ON s.symbol = w.symbol
WHERE w.symbol = $1
"""

# Where each storage level begins: raw ticks (and 10 s bars) from the `ticks` cutoff, minute bars
# from the `bars_1m` one (see the partition_policy table).
HORIZONS = """
SELECT parent, greatest(horizon, now() - keep) AS cutoff FROM partition_policy
WHERE parent IN ('ticks', 'bars_1m')
"""

# Up to $4 newest ticks per symbol in [$2, $3]; $4 = max_points + 1 tells "more than fits".
RAW_WINDOW = """
SELECT s.symbol, w.ts_ms, w.price
FROM unnest($1::text[]) AS s(symbol)
CROSS JOIN LATERAL (
    SELECT floor(extract(epoch FROM t.ts) * 1000)::bigint AS ts_ms, t.price, t.ts
    FROM ticks t
    WHERE t.symbol = s.symbol AND t.ts >= $2 AND t.ts <= $3
    ORDER BY t.ts DESC
    LIMIT $4
) w
ORDER BY s.symbol, w.ts
"""

# For windows narrower than the finest bars: one row per symbol and non-empty bucket of raw ticks,
# with the bucket's lowest and highest tick as [price, epoch ms] (the earliest at each; the high's
# time negated, as in BARS_WINDOW) and its last as [epoch ms, price], so spikes survive. Buckets
# are $4 microseconds wide (fixed length whatever the session's time zone), $5 of them from $2;
# each is read from the primary key (symbol, ts) INCLUDE (price) alone.
DOWNSAMPLED_WINDOW = """
SELECT s.symbol,
       ARRAY[g.low, floor(extract(epoch FROM lo.ts) * 1000)] AS low,
       ARRAY[g.high, -floor(extract(epoch FROM hi.ts) * 1000)] AS high,
       ARRAY[floor(extract(epoch FROM g.last_ts) * 1000), la.price] AS last
FROM unnest($1::text[]) AS s(symbol)
CROSS JOIN generate_series(0, $5::bigint - 1) AS n(i)
CROSS JOIN LATERAL (
    SELECT $2::timestamptz + (n.i * $4::bigint) * interval '1 microsecond' AS since,
           $2::timestamptz + ((n.i + 1) * $4::bigint) * interval '1 microsecond' AS until
) b
CROSS JOIN LATERAL (
    SELECT min(t.price) AS low, max(t.price) AS high, max(t.ts) AS last_ts
    FROM ticks t
    WHERE t.symbol = s.symbol AND t.ts >= b.since AND t.ts < b.until AND t.ts <= $3
    HAVING count(*) > 0
) g
CROSS JOIN LATERAL (
    SELECT t.ts FROM ticks t
    WHERE t.symbol = s.symbol AND t.ts >= b.since AND t.ts <= g.last_ts AND t.price = g.low
    ORDER BY t.ts LIMIT 1
) lo
CROSS JOIN LATERAL (
    SELECT t.ts FROM ticks t
    WHERE t.symbol = s.symbol AND t.ts >= b.since AND t.ts <= g.last_ts AND t.price = g.high
    ORDER BY t.ts LIMIT 1
) hi
CROSS JOIN LATERAL (
    SELECT t.price FROM ticks t WHERE t.symbol = s.symbol AND t.ts = g.last_ts
) la
ORDER BY s.symbol, n.i
"""

# Everything else: the $2-second bars of the window, regrouped into buckets $5 seconds wide (a
# whole number of bars, aligned to the epoch). Per bucket the lowest and the highest point (the
# earliest at each) and the last — real ticks inside the window [$3, $4]; only the last when $6
# is false. One row per symbol: how many ticks its bars hold (an upper bound for the window,
# whose edge bars may reach past it) and its points as two arrays, oldest first, one per time.
# Times become epoch ms in double precision (exact for microsecond timestamps: the 0.0005 keeps
# a whole millisecond from rounding down).
BARS_WINDOW = """
WITH b AS (
    SELECT symbol, date_bin(make_interval(secs => $5::int), bucket, 'epoch') AS slot, ticks,
           low, floor(date_part('epoch', low_ts) * 1000 + 0.0005) AS low_ms, low_ts,
           high, floor(date_part('epoch', high_ts) * 1000 + 0.0005) AS high_ms, high_ts,
           close, floor(date_part('epoch', close_ts) * 1000 + 0.0005) AS close_ms, close_ts
    FROM bars
    WHERE width_s = $2::int AND symbol = ANY($1::text[])
      AND bucket > $3::timestamptz - make_interval(secs => $2::int) AND bucket <= $4
), g AS (
    SELECT symbol, sum(ticks) AS ticks,
           min(ARRAY[low, low_ms]) FILTER (WHERE low_ts >= $3 AND low_ts <= $4) AS lo,
           max(ARRAY[high, -high_ms]) FILTER (WHERE high_ts >= $3 AND high_ts <= $4) AS hi,
           max(ARRAY[close_ms, close]) FILTER (WHERE close_ts >= $3 AND close_ts <= $4) AS la
    FROM b
    GROUP BY symbol, slot
), p AS (
    SELECT DISTINCT ON (g.symbol, x.ms) g.symbol, x.ms, x.price
    FROM g CROSS JOIN LATERAL (
        VALUES (g.lo[2], g.lo[1], 0), (-g.hi[2], g.hi[1], 1), (g.la[1], g.la[2], 2)
    ) AS x(ms, price, kind)
    WHERE x.ms IS NOT NULL AND ($6 OR x.kind = 2)
    ORDER BY g.symbol, x.ms, x.kind DESC
)
SELECT t.symbol, t.ticks, p.ts, p.price
FROM (SELECT symbol, sum(ticks) AS ticks FROM g GROUP BY symbol) t
LEFT JOIN (
    SELECT symbol, array_agg(ms::bigint ORDER BY ms) AS ts, array_agg(price ORDER BY ms) AS price
    FROM p GROUP BY symbol
) p USING (symbol)
ORDER BY t.symbol
"""

# The newest tick in [$2, $3] per symbol: from raw ticks when they are kept there ($4), else the
# close of the last minute bar that ends inside the window.
NEWEST_IN_WINDOW = """
SELECT s.symbol, coalesce(t.ts_ms, b.ts_ms) AS ts_ms, coalesce(t.price, b.price) AS price
FROM unnest($1::text[]) AS s(symbol)
LEFT JOIN LATERAL (
    SELECT floor(extract(epoch FROM ts) * 1000)::bigint AS ts_ms, price FROM ticks
    WHERE $4 AND symbol = s.symbol AND ts >= $2 AND ts <= $3
    ORDER BY ts DESC LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT floor(extract(epoch FROM close_ts) * 1000)::bigint AS ts_ms, close AS price FROM bars
    WHERE NOT $4 AND width_s = 60 AND symbol = s.symbol
      AND bucket > $2::timestamptz - interval '1 minute' AND bucket <= $3
      AND close_ts >= $2 AND close_ts <= $3
    ORDER BY bucket DESC LIMIT 1
) b ON true
"""

# Whole bars of one level whose bucket meets [$3, $4], for candlesticks; bucket start as epoch ms.
BARS = """
SELECT symbol, floor(extract(epoch FROM bucket) * 1000)::bigint AS ts_ms,
       open, high, low, close, ticks
FROM bars
WHERE width_s = $2::int AND symbol = ANY($1::text[])
  AND bucket > $3::timestamptz - make_interval(secs => $2::int) AND bucket <= $4
ORDER BY symbol, bucket
"""

LATEST = """
SELECT s.symbol, l.ts_ms AS ts, l.price, l.event_id
FROM unnest($1::text[]) AS s(symbol)
CROSS JOIN LATERAL (
    SELECT floor(extract(epoch FROM t.ts) * 1000)::bigint AS ts_ms, t.price, t.event_id
    FROM ticks t WHERE t.symbol = s.symbol ORDER BY t.ts DESC LIMIT 1
) l
ORDER BY s.symbol
"""

# The highest event id so far: where a fresh stream (or a `reset`) starts.
HEAD_EVENT_ID = "SELECT coalesce(max(event_id), 0) FROM ticks"

# Live ticks of tracked symbols after event id $1, oldest first, never backfilled history; $2
# bounds one fetch. (A symbol's ticks in flight when it was removed are not sent.)
TICKS_AFTER = """
SELECT t.symbol, floor(extract(epoch FROM t.ts) * 1000)::bigint AS ts_ms, t.price, t.event_id
FROM ticks t
WHERE t.event_id > $1 AND NOT t.backfilled
  AND EXISTS (SELECT FROM watchlist w WHERE w.symbol = t.symbol)
ORDER BY t.event_id
LIMIT $2
"""

# A stream's resume for every tracked symbol: the first $2 live ticks after event id $1.
REPLAY_AFTER = TICKS_AFTER

# The same for some symbols ($3). Each is read from its own place in the (symbol, event_id) index
# of live ticks, at most $2 rows of it, and the few read are merged by event id: the rows read
# stay within $2 per symbol however far back $1 is and however sparse a symbol is (one walk of the
# event-id order filtered by symbol reads every other symbol's ticks since $1 on the way).
REPLAY_SYMBOLS_AFTER = """
SELECT r.symbol, r.ts_ms, r.price, r.event_id
FROM unnest($3::text[]) AS s(symbol)
CROSS JOIN LATERAL (
    SELECT t.symbol, floor(extract(epoch FROM t.ts) * 1000)::bigint AS ts_ms, t.price, t.event_id
    FROM ticks t
    WHERE t.symbol = s.symbol AND t.event_id > $1 AND NOT t.backfilled
    ORDER BY t.event_id
    LIMIT $2
) r
ORDER BY r.event_id
LIMIT $2
"""

# -- CSV export: a text line per row, formatted by PostgreSQL, read through a cursor ---------
# Columns of prices.csv: symbol, time (ISO 8601 UTC, ms), ts (epoch ms), price, kind, source.
# `kind` is `tick`, `backfilled` (drawn from a vendor's minute bar) or `bar_1m` (a minute bar's
# close, where raw ticks are past retention). Symbols and sources never hold a comma or a quote.
EXPORT_TICKS = """
SELECT concat_ws(',', symbol, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                 floor(extract(epoch FROM ts) * 1000)::bigint, price,
                 CASE WHEN backfilled THEN 'backfilled' ELSE 'tick' END, coalesce(source, ''))
FROM ticks
WHERE symbol = $1 AND ts >= $2 AND ts <= $3
ORDER BY ts
"""

# Minute bars in [$2, $3), for the part of a window older than the raw ticks' retention.
EXPORT_MINUTES = """
SELECT concat_ws(',', symbol, to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                 floor(extract(epoch FROM bucket) * 1000)::bigint, close, 'bar_1m', '')
FROM bars
WHERE width_s = 60 AND symbol = $1 AND bucket >= $2 AND bucket < $3
ORDER BY bucket
"""

# Columns of bars.csv: symbol, time, ts, open, high, low, close, ticks; the bars of one level
# ($2 seconds) that meet [$3, $4], as BARS.
EXPORT_BARS = """
SELECT concat_ws(',', symbol, to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                 floor(extract(epoch FROM bucket) * 1000)::bigint, open, high, low, close, ticks)
FROM bars
WHERE width_s = $2::int AND symbol = $1
  AND bucket > $3::timestamptz - make_interval(secs => $2::int) AND bucket <= $4
ORDER BY bucket
"""

# -- The watchlist ----------------------------------------------------------------------------
# Adds and removals take this transaction-scoped lock first, so that the count a POST checks
# against STOCKSTREAMER_MAX_SYMBOLS is still the count when it commits, whichever worker or
# replica serves it.
LOCK_WATCHLIST = "SELECT pg_advisory_xact_lock(hashtext('stockstreamer.watchlist'))"

# Symbols that count against the limit (a rejected one does not), $1 left out.
COUNT_WATCHED = """
SELECT count(*) FROM watchlist WHERE state <> 'rejected' AND symbol <> $1
"""

WATCHED = "SELECT origin, state FROM watchlist WHERE symbol = $1"

# A new symbol, pending (a row the fetcher's configuration added meanwhile is left as it is).
ADD_WATCHED = """
INSERT INTO watchlist (symbol, origin) VALUES ($1, 'api') ON CONFLICT (symbol) DO NOTHING
"""

# A rejected symbol added again is tried again.
RETRY_WATCHED = """
UPDATE watchlist
SET state = 'pending', progress = NULL, reason = NULL, requested_at = now(), updated_at = now()
WHERE symbol = $1 AND state = 'rejected'
"""

# Removes an `api` row; returns its symbol (none: not there, or configured).
REMOVE_WATCHED = "DELETE FROM watchlist WHERE symbol = $1 AND origin = 'api' RETURNING symbol"

NOTIFY = "SELECT pg_notify($1, $2)"

# -- Alerts ----------------------------------------------------------------------------------
# Creates serialise on this lock: the count of alerts in force is checked against
# STOCKSTREAMER_MAX_ALERTS and the new one inserted before another create counts.
LOCK_ALERTS = "SELECT pg_advisory_xact_lock(hashtext('stockstreamer.alerts'))"

COUNT_ALERTS = "SELECT count(*) FROM alerts WHERE deleted_at IS NULL"

# Channel names a new alert may use besides `browser`: those the alerts service was given.
CHANNELS_KNOWN = "SELECT name FROM alert_channels WHERE name = ANY($1::text[])"

_ALERT_COLUMNS = "id, symbol, condition, value, channels, note, armed, fired, created_at"

CREATE_ALERT = f"""
INSERT INTO alerts (symbol, condition, value, channels, note)
VALUES ($1, $2, $3, $4::text[], $5)
RETURNING {_ALERT_COLUMNS}
"""

ALERTS = f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE deleted_at IS NULL ORDER BY id"

ALERT = f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = $1 AND deleted_at IS NULL"

# Any alert ever created, deleted ones too (their events stay readable).
ALERT_CREATED = "SELECT id FROM alerts WHERE id = $1"

DELETE_ALERT = """
UPDATE alerts SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING id
"""

# Every firing of alert $1 and every delivery attempt of those, oldest first (a firing before
# its deliveries).
ALERT_EVENTS = """
SELECT 'fired' AS type, f.id AS firing_id, f.fired_at AS at, f.price, f.line, f.tick_ts,
       NULL::text AS channel, NULL::int AS attempt, NULL::text AS result, NULL::text AS detail,
       f.id AS firing_order, 0 AS delivery_order
FROM alert_firings f WHERE f.alert_id = $1
UNION ALL
SELECT 'delivery', d.firing_id, d.at, NULL, NULL, NULL, d.channel, d.attempt, d.result, d.detail,
       d.firing_id, d.id
FROM alert_deliveries d JOIN alert_firings f ON f.id = d.firing_id
WHERE f.alert_id = $1
ORDER BY at, firing_order, delivery_order
"""

# The firings ($1: their ids) as `alert` events carry them, oldest first.
FIRINGS = """
SELECT f.id AS firing_id, f.alert_id, a.symbol, a.condition, a.value, f.price, f.line,
       floor(extract(epoch FROM f.tick_ts) * 1000)::bigint AS ts, a.note, a.channels
FROM alert_firings f JOIN alerts a ON a.id = f.alert_id
WHERE f.id = ANY($1::bigint[])
ORDER BY f.id
"""

# Firings after id $1, oldest first, at most $2: what a listener away for a while missed.
FIRINGS_AFTER = """
SELECT f.id AS firing_id, f.alert_id, a.symbol, a.condition, a.value, f.price, f.line,
       floor(extract(epoch FROM f.tick_ts) * 1000)::bigint AS ts, a.note, a.channels
FROM alert_firings f JOIN alerts a ON a.id = f.alert_id
WHERE f.id > $1
ORDER BY f.id
LIMIT $2
"""

LAST_FIRING = "SELECT coalesce(max(id), 0) FROM alert_firings"

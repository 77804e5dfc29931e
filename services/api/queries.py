"""The API's SQL, as named, parameterised statements (read-only)."""

from __future__ import annotations

# Times leave as epoch milliseconds, floored, so a point never rounds into the next millisecond.

SELECT_ONE = "SELECT 1"

ALL_SYMBOLS = "SELECT symbol FROM stocks ORDER BY symbol"

KNOWN_SYMBOLS = "SELECT symbol FROM stocks WHERE symbol = ANY($1::text[])"

# Stocks with their last tick; the change reference is the previous close when the provider gives
# one, else the first tick of the last tick's trading day in exchange time (America/New_York).
# $1: symbols, or NULL for all.
STOCKS = """
SELECT s.symbol, s.name, s.logo_url, s.week52_high, s.week52_low, s.previous_close,
       s.metadata_updated_at, l.price AS last_price, l.ts AS last_ts,
       COALESCE(s.previous_close, o.price) AS reference
FROM stocks s
LEFT JOIN LATERAL (
    SELECT t.price, t.ts FROM ticks t WHERE t.symbol = s.symbol ORDER BY t.ts DESC LIMIT 1
) l ON true
LEFT JOIN LATERAL (
    SELECT t.price FROM ticks t
    WHERE s.previous_close IS NULL AND t.symbol = s.symbol
      AND t.ts >= date_trunc('day', l.ts, 'America/New_York')
    ORDER BY t.ts LIMIT 1
) o ON true
WHERE $1::text[] IS NULL OR s.symbol = ANY($1::text[])
ORDER BY s.symbol
"""

# Metadata changed since $1: announced to streams after the listener missed notifications.
STOCKS_CHANGED_SINCE = "SELECT symbol FROM stocks WHERE metadata_updated_at >= $1"

METADATA = """
SELECT symbol, logo_url, week52_high, week52_low, metadata_updated_at AS updated_at
FROM stocks WHERE symbol = $1
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

# One row per symbol and non-empty time bucket: the bucket's lowest, highest and last tick, each as
# [price, epoch seconds] (last as [epoch seconds, price]) so spikes survive. Buckets are $4
# microseconds wide (fixed length whatever the session's time zone), $5 of them from $2. Each bucket
# is read with index-only scans of the primary key (symbol, ts) INCLUDE (price): no full sort.
DOWNSAMPLED_WINDOW = """
SELECT s.symbol,
       ARRAY[g.low, extract(epoch FROM lo.ts)] AS low,
       ARRAY[g.high, extract(epoch FROM hi.ts)] AS high,
       ARRAY[extract(epoch FROM g.last_ts), la.price] AS last
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
CROSS JOIN LATERAL (  -- the earliest tick at the low
    SELECT t.ts FROM ticks t
    WHERE t.symbol = s.symbol AND t.ts >= b.since AND t.ts <= g.last_ts AND t.price = g.low
    ORDER BY t.ts LIMIT 1
) lo
CROSS JOIN LATERAL (  -- the latest tick at the high
    SELECT t.ts FROM ticks t
    WHERE t.symbol = s.symbol AND t.ts >= b.since AND t.ts <= g.last_ts AND t.price = g.high
    ORDER BY t.ts DESC LIMIT 1
) hi
CROSS JOIN LATERAL (
    SELECT t.price FROM ticks t WHERE t.symbol = s.symbol AND t.ts = g.last_ts
) la
ORDER BY s.symbol, n.i
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

# Live ticks after event id $1, oldest first, never backfilled history; $2 bounds one fetch.
TICKS_AFTER = """
SELECT symbol, floor(extract(epoch FROM ts) * 1000)::bigint AS ts_ms, price, event_id
FROM ticks
WHERE event_id > $1 AND NOT backfilled
ORDER BY event_id
LIMIT $2
"""

# The same for one stream's resume: only its symbols ($3, or NULL for all).
REPLAY_AFTER = """
SELECT symbol, floor(extract(epoch FROM ts) * 1000)::bigint AS ts_ms, price, event_id
FROM ticks
WHERE event_id > $1 AND NOT backfilled AND ($3::text[] IS NULL OR symbol = ANY($3::text[]))
ORDER BY event_id
LIMIT $2
"""

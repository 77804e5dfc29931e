"""The fetcher's SQL, as named, parameterised statements."""

from __future__ import annotations

ENSURE_STOCKS = """
INSERT INTO stocks (symbol)
SELECT unnest($1::text[])
ON CONFLICT (symbol) DO NOTHING
"""

# One statement per batch; a tick already stored (same symbol and time) is skipped.
INSERT_TICKS = """
WITH inserted AS (
    INSERT INTO ticks (symbol, ts, price, volume)
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::numeric[], $4::bigint[])
    ON CONFLICT (symbol, ts) DO NOTHING
    RETURNING event_id
)
SELECT count(*) AS inserted, max(event_id) AS max_event_id FROM inserted
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

# Backfilled history: stored once, marked so that live streams never send it as news; the
# result describes what was new, for the `history` notification.
INSERT_HISTORY = """
WITH inserted AS (
    INSERT INTO ticks (symbol, ts, price, volume, backfilled)
    SELECT s, t, p, v, true
    FROM unnest($1::text[], $2::timestamptz[], $3::numeric[], $4::bigint[]) AS u(s, t, p, v)
    ON CONFLICT (symbol, ts) DO NOTHING
    RETURNING symbol, ts
)
SELECT count(*) AS inserted,
       array_agg(DISTINCT symbol ORDER BY symbol) AS symbols,
       min(ts) AS first_ts,
       max(ts) AS last_ts
FROM inserted
"""

# Where each symbol's stored history ends, ignoring anything from this run onwards.
# One backwards index probe per symbol, however many ticks are stored.
LAST_TICK_BEFORE = """
SELECT s AS symbol, (SELECT max(ts) FROM ticks WHERE symbol = s AND ts < $2) AS last_ts
FROM unnest($1::text[]) AS s
"""

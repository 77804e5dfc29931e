"""The fetcher's SQL for the `feed` row, as named, parameterised statements."""

from __future__ import annotations

# The one feed row: the live chain in order, the provider serving now, the history source and the
# market's calendar; NOTIFY feed (payload: the serving provider) in the same statement.
# $1 chain, $2 active, $3 history, $4 calendar, $5 extended hours.
WRITE_FEED = """
WITH written AS (
    INSERT INTO feed AS f (id, chain, active, history, calendar, extended_hours, updated_at)
    VALUES (true, $1::text[], $2, $3, $4, $5, now())
    ON CONFLICT (id) DO UPDATE SET
        chain = excluded.chain,
        active = excluded.active,
        history = excluded.history,
        calendar = excluded.calendar,
        extended_hours = excluded.extended_hours,
        updated_at = excluded.updated_at
    RETURNING f.active
)
SELECT pg_notify('feed', coalesce(active, '')) FROM written
"""

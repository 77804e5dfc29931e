"""The alerts service's SQL, as named, parameterised statements."""

from __future__ import annotations

# -- the resume point -------------------------------------------------------------------------
# A first start begins at the newest tick: what came before was never announced to alerts.
HEAD_EVENT_ID = "SELECT coalesce(max(event_id), 0) FROM ticks"

INIT_CURSOR = """
INSERT INTO alert_cursor (last_event_id)
SELECT coalesce(max(event_id), 0) FROM ticks
ON CONFLICT (id) DO NOTHING
"""

CURSOR = "SELECT last_event_id FROM alert_cursor"

SET_CURSOR = "UPDATE alert_cursor SET last_event_id = $1, updated_at = now()"

# Live ticks after event id $1 up to $3 in the order they were committed (one writer hands out
# the ids); never backfilled history. $2 bounds one read.
TICKS_AFTER = """
SELECT event_id, symbol, price, ts
FROM ticks
WHERE event_id > $1 AND event_id <= $3 AND NOT backfilled
ORDER BY event_id
LIMIT $2
"""

# Each symbol's last live tick up to event id $2: the price a new alert is checked against.
LAST_PRICES = """
SELECT s.symbol, t.price, t.ts
FROM unnest($1::text[]) AS s (symbol)
CROSS JOIN LATERAL (
    SELECT price, ts
    FROM ticks
    WHERE symbol = s.symbol AND NOT backfilled AND event_id <= $2
    ORDER BY event_id DESC
    LIMIT 1
) AS t
"""

# -- alerts -----------------------------------------------------------------------------------
ALERT_COLUMNS = "id, symbol, condition, value, channels, note, armed"

ACTIVE_ALERTS = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE deleted_at IS NULL ORDER BY id"

ALERT = f"SELECT {ALERT_COLUMNS}, deleted_at FROM alerts WHERE id = $1"

PREVIOUS_CLOSES = """
SELECT symbol, previous_close::float8 AS previous_close
FROM stocks
WHERE symbol = any($1::text[])
"""

# -- one evaluation's outcome, in one transaction ---------------------------------------------
# Firings in the order given (identity values follow the insert order): their ids, ascending.
RECORD_FIRINGS = """
INSERT INTO alert_firings (alert_id, price, line, tick_event_id, tick_ts)
SELECT alert_id, price, line, tick_event_id, tick_ts
FROM unnest($1::bigint[], $2::float8[], $3::float8[], $4::bigint[], $5::timestamptz[])
    WITH ORDINALITY AS u (alert_id, price, line, tick_event_id, tick_ts, n)
ORDER BY n
RETURNING id
"""

# Each changed alert's armed state now, and how many times it fired.
UPDATE_ALERTS = """
UPDATE alerts AS a
SET armed = u.armed, fired = a.fired + u.fired
FROM unnest($1::bigint[], $2::boolean[], $3::integer[]) AS u (id, armed, fired)
WHERE a.id = u.id
"""

RECORD_DELIVERIES = """
INSERT INTO alert_deliveries (firing_id, channel, attempt, result, detail)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::text[], $5::text[])
"""

# The browser channel's delivery: the API streams this notification as an `alert` event.
NOTIFY_FIRINGS = "SELECT pg_notify('alert', id::text) FROM unnest($1::bigint[]) AS f (id)"

# -- channels ---------------------------------------------------------------------------------
DELETE_OTHER_CHANNELS = "DELETE FROM alert_channels WHERE name <> ALL($1::text[])"

INSERT_CHANNELS = """
INSERT INTO alert_channels (name)
SELECT unnest($1::text[])
ON CONFLICT (name) DO NOTHING
"""

# -- deliveries -------------------------------------------------------------------------------
FIRING_COLUMNS = """
f.id AS firing_id, f.alert_id, f.price, f.line, f.tick_event_id, f.tick_ts,
a.symbol, a.condition, a.value, a.note"""

# Every (firing, channel) that has neither been delivered nor given up on, oldest first, with the
# attempts made so far. `browser` is delivered by the firing's own transaction.
PENDING_DELIVERIES = f"""
SELECT {FIRING_COLUMNS}, c.channel,
       (SELECT coalesce(max(d.attempt), 0) FROM alert_deliveries AS d
        WHERE d.firing_id = f.id AND d.channel = c.channel) AS attempts
FROM alert_firings AS f
JOIN alerts AS a ON a.id = f.alert_id
CROSS JOIN LATERAL unnest(a.channels) AS c (channel)
WHERE c.channel <> 'browser'
  AND NOT EXISTS (
      SELECT FROM alert_deliveries AS d
      WHERE d.firing_id = f.id AND d.channel = c.channel
        AND d.result IN ('delivered', 'abandoned')
  )
ORDER BY f.id, c.channel
"""

-- migrate:up

-- Lets the API's downsampled history read (symbol, ts, price) from the index alone (index-only
-- scans, bucket by bucket) instead of sorting every tick of the window.
CREATE INDEX ticks_symbol_ts_price ON ticks (symbol, ts) INCLUDE (price);

-- migrate:down

DROP INDEX ticks_symbol_ts_price;

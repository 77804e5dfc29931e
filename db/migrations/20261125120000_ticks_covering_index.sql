-- migrate:up

-- The primary key also carries the price, so the API's downsampled history reads (symbol, ts,
-- price) from the index alone (index-only scans, bucket by bucket) instead of sorting every tick
-- of the window. One index, not a second copy of (symbol, ts) beside the key.
ALTER TABLE ticks
    DROP CONSTRAINT ticks_pkey,
    ADD CONSTRAINT ticks_pkey PRIMARY KEY (symbol, ts) INCLUDE (price);

-- migrate:down

ALTER TABLE ticks
    DROP CONSTRAINT ticks_pkey,
    ADD CONSTRAINT ticks_pkey PRIMARY KEY (symbol, ts);

-- migrate:up

-- The partition functions run as their owner (SECURITY DEFINER) for the writer role, so nothing
-- the caller controls may reach them:
--  * search_path is pg_catalog, then pg_temp LAST. A session's temporary schema is otherwise
--    searched FIRST for table and type names, and every role may create temporary tables: a
--    temporary `partition_policy`, `pg_class` or `pg_inherits` would have chosen what they drop.
--    Every name inside is schema-qualified as well.
--  * Retention takes no arguments: how long data is kept is set by the database's owner alone
--    (stockstreamer_set_retention, from db/users.sql), never by the writer it protects data from.

CREATE OR REPLACE FUNCTION public.stockstreamer_ensure_partition(target text, at timestamptz)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    span  interval;
    lower timestamptz;
    name  text;
BEGIN
    SELECT p.step INTO span FROM public.partition_policy p WHERE p.parent = target;
    IF span IS NULL THEN
        RAISE EXCEPTION 'not a time-partitioned table: %', target;
    END IF;
    IF span = interval '1 month' THEN
        lower := pg_catalog.date_trunc('month', at, 'UTC');
        name := target || '_p' || pg_catalog.to_char(lower AT TIME ZONE 'UTC', 'YYYYMM');
    ELSE
        lower := pg_catalog.date_trunc('day', at, 'UTC');
        name := target || '_p' || pg_catalog.to_char(lower AT TIME ZONE 'UTC', 'YYYYMMDD');
    END IF;
    IF pg_catalog.to_regclass(pg_catalog.format('public.%I', name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE pg_catalog.format(
            'CREATE TABLE public.%I PARTITION OF public.%I FOR VALUES FROM (%L) TO (%L)',
            name, target, lower, lower + span
        );
    EXCEPTION WHEN invalid_object_definition THEN
        RETURN false;  -- already covered (by the partition that holds the pre-partitioning rows)
    END;
    RETURN true;
END
$$;

-- Drops every partition whose newest possible row is older than its table's retention (as the
-- owner set it in partition_policy) allows; returns the names dropped.
DROP FUNCTION public.stockstreamer_apply_retention(interval, interval);
CREATE FUNCTION public.stockstreamer_apply_retention()
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    policy record;
    part   record;
BEGIN
    FOR policy IN
        SELECT p.parent, p.keep FROM public.partition_policy p ORDER BY p.parent
    LOOP
        UPDATE public.partition_policy p
        SET horizon = greatest(p.horizon, pg_catalog.now() - policy.keep)
        WHERE p.parent = policy.parent;
        FOR part IN
            SELECT c.relname,
                   pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                        'TO \(''([^'']+)''\)')::timestamptz AS upper
            FROM pg_catalog.pg_inherits i
            JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = pg_catalog.to_regclass(pg_catalog.format('public.%I', policy.parent))
              AND c.relnamespace = 'public'::pg_catalog.regnamespace
        LOOP
            IF part.upper <= pg_catalog.now() - policy.keep THEN
                EXECUTE pg_catalog.format('DROP TABLE public.%I', part.relname);
                RETURN NEXT part.relname;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- How long raw ticks (and 10 s bars) and minute bars are kept: the owner's settings
-- (STOCKSTREAMER_RETENTION, STOCKSTREAMER_RETENTION_MINUTE), as text in any form they take —
-- seconds (86400), 7d / 12h / 30m, ISO 8601 (P7D) — empty or NULL for the defaults (30 days,
-- 400 days). Refused unless minute bars are kept at least as long as raw ticks, and raw ticks at
-- least a day (data goes a whole day at a time). Runs as its caller: only the owner may update
-- partition_policy. A procedure, so that psql prints nothing for it.
CREATE PROCEDURE public.stockstreamer_set_retention(raw text, minute text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names    text[] := ARRAY['retention', 'retention_minute'];
    given    text[] := ARRAY[raw, minute];
    defaults interval[] := ARRAY[interval '30 days', interval '400 days'];
    kept     interval[] := ARRAY[NULL, NULL]::interval[];
    value    interval;
BEGIN
    FOR i IN 1..2 LOOP
        IF pg_catalog.btrim(coalesce(given[i], '')) = '' THEN
            value := defaults[i];
        ELSE
            BEGIN
                value := pg_catalog.btrim(given[i])::interval;
            EXCEPTION WHEN data_exception THEN
                RAISE EXCEPTION '%: % is not a duration', names[i], pg_catalog.quote_literal(given[i])
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'seconds (86400), 7d / 12h / 30m, or ISO 8601 (P7D)';
            END;
            IF value::text IN ('infinity', '-infinity') OR value < interval '1 day' THEN
                RAISE EXCEPTION '%: % must be at least 1 day and finite', names[i],
                                pg_catalog.quote_literal(given[i])
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'data is dropped a whole day at a time';
            END IF;
        END IF;
        kept[i] := pg_catalog.justify_hours(value);
    END LOOP;
    IF kept[2] < kept[1] THEN
        RAISE EXCEPTION 'retention_minute (%) must not be shorter than retention (%)', kept[2], kept[1]
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE public.partition_policy p
    SET keep = CASE WHEN p.step = interval '1 day' THEN kept[1] ELSE kept[2] END;
END
$$;

REVOKE ALL ON FUNCTION public.stockstreamer_apply_retention() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.stockstreamer_apply_retention() TO stockstreamer_writer;
REVOKE ALL ON PROCEDURE public.stockstreamer_set_retention(text, text) FROM PUBLIC;

COMMENT ON TABLE public.partition_policy IS
    'Time-partitioned tables: partition width, how long data is kept (set by the owner with '
    'stockstreamer_set_retention), and the horizon before which nothing is stored raw any more.';

-- migrate:down

-- The functions as the partitioning migration made them; the retention stored stays.
COMMENT ON TABLE public.partition_policy IS NULL;
DROP PROCEDURE public.stockstreamer_set_retention(text, text);
DROP FUNCTION public.stockstreamer_apply_retention();

CREATE OR REPLACE FUNCTION public.stockstreamer_ensure_partition(target text, at timestamptz)
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

CREATE FUNCTION public.stockstreamer_apply_retention(raw interval, minute interval)
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

REVOKE ALL ON FUNCTION public.stockstreamer_apply_retention(interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.stockstreamer_apply_retention(interval, interval)
    TO stockstreamer_writer;

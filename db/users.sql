-- The services' login users, and the settings only the database's owner may apply.
--   stockstreamer_fetcher  in stockstreamer_writer   (select, insert, update; watchlist states)
--   stockstreamer_api      in stockstreamer_editor   (select; the watchlist and alerts' rows)
--                          and stockstreamer_reader  (select only: what the API used before)
--   stockstreamer_alerts   in stockstreamer_alerter  (reads ticks; writes alert state alone)
--   stockstreamer_monitor  in pg_monitor             (statistics for postgres_exporter)
-- The superuser (RDS: the master user) keeps the schema: it runs the migrations and this file.
-- Idempotent: run after the migrations, every time (the retention and connection limits follow the
-- settings and the server as they are now). With psql:
--   psql -v ON_ERROR_STOP=1 -v fetcher_verifier=... -v api_verifier=... -v alerts_verifier=... \
--        [-v monitor_verifier=...] [-v retention=30d -v retention_minute=400d] -f db/users.sql
--   psql -v ON_ERROR_STOP=1 -v iam=on [-v retention=...] -f db/users.sql   (RDS: IAM tokens)
-- Passwords never reach the server: each login's password is set from its SCRAM-SHA-256 verifier
-- (`deploy/make-secrets` writes them: secrets/fetcher-db-verifier, api-db-verifier,
-- alerts-db-verifier, monitor-db-verifier). Values go in as psql variables, quoted by psql or by
-- format() on the server, never spliced into SQL by hand.
--   retention, retention_minute   STOCKSTREAMER_RETENTION, STOCKSTREAMER_RETENTION_MINUTE: how
--                                 long raw ticks and minute bars are kept (empty: 30d, 400d)

-- Passwords in clear text are refused, not sent (they would reach the server and its logs).
\set plaintext false
\if :{?fetcher_password}
\set plaintext true
\endif
\if :{?api_password}
\set plaintext true
\endif
\if :{?alerts_password}
\set plaintext true
\endif
\if :{?monitor_password}
\set plaintext true
\endif
\if :plaintext
DO $$
BEGIN
    RAISE EXCEPTION 'db/users.sql takes SCRAM verifiers, not passwords'
        USING HINT = 'pass -v fetcher_verifier=... -v api_verifier=... -v alerts_verifier=... '
                     '-v monitor_verifier=... '
                     '(deploy/make-secrets writes them as *-db-verifier)';
END
$$;
\endif

-- The group roles come from the migrations, which run first.
DO $$
DECLARE
    login text;
BEGIN
    FOREACH login IN ARRAY ARRAY['stockstreamer_fetcher', 'stockstreamer_api',
                                 'stockstreamer_alerts', 'stockstreamer_monitor']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', login);
        END IF;
    END LOOP;
END
$$;

-- Log in, nothing more. (CREATE ROLE's defaults already deny SUPERUSER, REPLICATION and
-- BYPASSRLS; naming them would need a true superuser, which RDS's master user is not.)
ALTER ROLE stockstreamer_fetcher LOGIN NOCREATEDB NOCREATEROLE;
ALTER ROLE stockstreamer_api LOGIN NOCREATEDB NOCREATEROLE;
ALTER ROLE stockstreamer_alerts LOGIN NOCREATEDB NOCREATEROLE;
ALTER ROLE stockstreamer_monitor LOGIN NOCREATEDB NOCREATEROLE;

-- Connection limits that fit the server: whatever the number of API replicas, the fetcher, the
-- alerts service and the monitor always find a free slot, and so do the superuser's one-shots
-- and backups.
DO $$
DECLARE
    total    int := current_setting('max_connections')::int;
    -- slots only superusers (and, on PostgreSQL 16+, pg_use_reserved_connections; on RDS,
    -- rds_superuser) may take
    reserved int := current_setting('superuser_reserved_connections')::int
        + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)
        + coalesce(nullif(current_setting('rds.rds_superuser_reserved_connections', true), '')::int, 0);
    fetcher  int := 3;  -- it holds one; the rest covers a reconnect while the old one lingers
    alerts   int := 3;  -- its listener and one for its writes; the rest covers a reconnect
    monitor  int := 3;
    headroom int := 4;  -- migrations, this file, backups, an operator's psql (as the superuser,
                        -- which also has the reserved slots)
    api      int := total - reserved - fetcher - alerts - monitor - headroom;
BEGIN
    IF api < 2 THEN
        RAISE EXCEPTION 'max_connections = % leaves the API login % connections', total, api
            USING HINT = format('raise max_connections to at least %s', total - api + 2);
    END IF;
    EXECUTE format('ALTER ROLE stockstreamer_fetcher CONNECTION LIMIT %s', fetcher);
    EXECUTE format('ALTER ROLE stockstreamer_alerts CONNECTION LIMIT %s', alerts);
    EXECUTE format('ALTER ROLE stockstreamer_monitor CONNECTION LIMIT %s', monitor);
    EXECUTE format('ALTER ROLE stockstreamer_api CONNECTION LIMIT %s', api);
END
$$;

GRANT stockstreamer_writer TO stockstreamer_fetcher;
-- The API switches to the editor (STOCKSTREAMER_API_DB_ROLE); the reader stays granted, so an
-- API still set to it keeps working while the setting moves.
GRANT stockstreamer_editor TO stockstreamer_api;
GRANT stockstreamer_reader TO stockstreamer_api;
GRANT stockstreamer_alerter TO stockstreamer_alerts;
GRANT pg_monitor TO stockstreamer_monitor;  -- statistics only: reads no table of ours

-- Objects are created by the superuser alone (PostgreSQL before 15 let every user create them),
-- and no login gets a temporary schema: none needs one, and temporary tables searched before
-- the real ones are how a caller misleads code that trusts its search_path.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;

\if :{?iam}
-- Amazon RDS with IAM database authentication: the instance signs a short-lived token instead.
GRANT rds_iam TO stockstreamer_fetcher, stockstreamer_api, stockstreamer_alerts;
\else
-- Each login's SCRAM verifier, checked here: PostgreSQL would hash anything that is not a
-- well-formed verifier as if it were a password, so a password given by mistake is refused.
\if :{?fetcher_verifier}
\else
\set fetcher_verifier ''
\endif
\if :{?api_verifier}
\else
\set api_verifier ''
\endif
\if :{?alerts_verifier}
\else
\set alerts_verifier ''
\endif
\if :{?monitor_verifier}
\else
\set monitor_verifier ''
\endif
-- Staged in session settings for the block below (which cannot see psql variables); \gset keeps
-- them off the output.
SELECT set_config('stockstreamer.fetcher_verifier', :'fetcher_verifier', false) AS staged_fetcher,
       set_config('stockstreamer.api_verifier', :'api_verifier', false) AS staged_api,
       set_config('stockstreamer.alerts_verifier', :'alerts_verifier', false) AS staged_alerts,
       set_config('stockstreamer.monitor_verifier', :'monitor_verifier', false) AS staged_monitor
\gset
DO $users$
DECLARE
    login    text;
    variable text;
    verifier text;
BEGIN
    FOR login, variable IN
        VALUES ('stockstreamer_fetcher', 'fetcher_verifier'),
               ('stockstreamer_api', 'api_verifier'),
               ('stockstreamer_alerts', 'alerts_verifier'),
               ('stockstreamer_monitor', 'monitor_verifier')
    LOOP
        verifier := current_setting('stockstreamer.' || variable);
        PERFORM set_config('stockstreamer.' || variable, '', false);
        IF verifier = '' AND login = 'stockstreamer_monitor' THEN
            CONTINUE;  -- optional: the monitor logs in only with the observability profile
        ELSIF verifier = '' THEN
            RAISE EXCEPTION 'db/users.sql: % is missing', variable
                USING HINT = format('pass -v %s=... (the SCRAM verifier of %s''s password)',
                                    variable, login);
        ELSIF verifier !~ ('^SCRAM-SHA-256\$[1-9][0-9]*:[A-Za-z0-9+/]+={0,2}'
                           '\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$') THEN
            -- the value is never repeated: it may be a password
            RAISE EXCEPTION 'db/users.sql: % is not a SCRAM-SHA-256 verifier', variable
                USING HINT = 'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, '
                             'as deploy/make-secrets writes it';
        END IF;
        EXECUTE format('ALTER ROLE %I PASSWORD %L', login, verifier);
    END LOOP;
END
$users$;
\endif

-- How long data is kept: only the owner sets it (the writer's retention takes no arguments).
\if :{?retention}
\else
\set retention ''
\endif
\if :{?retention_minute}
\else
\set retention_minute ''
\endif
CALL public.stockstreamer_set_retention(:'retention', :'retention_minute');

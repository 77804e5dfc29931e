-- The services' login users: each is a member of one group role and holds nothing else.
--   stockstreamer_fetcher  in stockstreamer_writer  (select, insert, update)
--   stockstreamer_api      in stockstreamer_reader  (select only)
--   stockstreamer_monitor  in pg_monitor            (statistics for postgres_exporter)
-- The superuser (RDS: the master user) keeps the schema: it runs the migrations and this file.
-- Idempotent: run after the migrations (every time), and again to change a password. With psql:
--   psql -v ON_ERROR_STOP=1 -v fetcher_password=... -v api_password=... \
--        -v monitor_password=... -f db/users.sql
--   psql -v ON_ERROR_STOP=1 -v iam=on -f db/users.sql     (Amazon RDS: IAM tokens, no passwords)
-- Passwords go in as psql variables (quoted by psql, never spliced into SQL by hand).

-- The group roles come from the migrations, which run first.
DO $$
DECLARE
    login text;
BEGIN
    FOREACH login IN ARRAY ARRAY['stockstreamer_fetcher', 'stockstreamer_api', 'stockstreamer_monitor']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', login);
        END IF;
    END LOOP;
END
$$;

-- Log in, nothing more, a bounded number of connections each. (CREATE ROLE's defaults already
-- deny SUPERUSER, REPLICATION and BYPASSRLS; naming them would need a true superuser, which
-- RDS's master user is not.)
ALTER ROLE stockstreamer_fetcher LOGIN NOCREATEDB NOCREATEROLE CONNECTION LIMIT 20;
ALTER ROLE stockstreamer_api LOGIN NOCREATEDB NOCREATEROLE CONNECTION LIMIT 200;
ALTER ROLE stockstreamer_monitor LOGIN NOCREATEDB NOCREATEROLE CONNECTION LIMIT 3;

GRANT stockstreamer_writer TO stockstreamer_fetcher;
GRANT stockstreamer_reader TO stockstreamer_api;
GRANT pg_monitor TO stockstreamer_monitor;  -- statistics only: reads no table of ours

-- Objects are created by the superuser alone (PostgreSQL before 15 let every user create them).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

\if :{?iam}
-- Amazon RDS with IAM database authentication: the instance signs a short-lived token instead.
GRANT rds_iam TO stockstreamer_fetcher, stockstreamer_api;
\else
ALTER ROLE stockstreamer_fetcher PASSWORD :'fetcher_password';
ALTER ROLE stockstreamer_api PASSWORD :'api_password';
\if :{?monitor_password}
ALTER ROLE stockstreamer_monitor PASSWORD :'monitor_password';
\endif
\endif

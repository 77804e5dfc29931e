"""Which secrets exist, what each is made from, and which files each consumer gets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# password: random, made once; token: a random API token, made once (a chosen file may hold
# several, one a line); key: chosen or empty (vendor keys, the alert channels); url, verifier:
# made from a password.
Kind = Literal["password", "token", "key", "url", "verifier"]
APP_UID = 10001  # the stockstreamer image's user
GRAFANA_UID = 472  # the grafana image's user
NOBODY = 65534  # postgres_exporter's user


@dataclass(frozen=True, slots=True)
class Secret:
    """One secret: a file of that name in a secrets directory."""

    name: str
    kind: Kind
    of: str | None = None  # url, verifier: the password it is made from
    user: str | None = None  # url: the login it is for


@dataclass(frozen=True, slots=True)
class Consumer:
    """A container and the files it finds in its /run/secrets (file name → secret)."""

    name: str
    uid: int
    gid: int
    files: dict[str, str] = field(default_factory=dict)


# Made in this order: passwords and vendor keys first, then what is derived from them.
SECRETS: tuple[Secret, ...] = (
    Secret("postgres-password", "password"),
    Secret("fetcher-db-password", "password"),
    Secret("api-db-password", "password"),
    Secret("monitor-db-password", "password"),
    Secret("alerts-db-password", "password"),
    Secret("grafana-admin-password", "password"),
    Secret("api-token", "token"),
    Secret("finnhub-api-key", "key"),
    Secret("twelvedata-api-key", "key"),
    Secret("alpaca-api-key-id", "key"),
    Secret("alpaca-api-secret-key", "key"),
    # The alerts service's channels (YAML: name → Apprise URL); empty: only `browser`.
    Secret("alert-channels.yaml", "key"),
    Secret("migrate-database-url", "url", of="postgres-password", user="stockstreamer"),
    Secret("fetcher-database-url", "url", of="fetcher-db-password", user="stockstreamer_fetcher"),
    Secret("api-database-url", "url", of="api-db-password", user="stockstreamer_api"),
    Secret("alerts-database-url", "url", of="alerts-db-password", user="stockstreamer_alerts"),
    # What db/users.sql sets: the logins' passwords as SCRAM verifiers, never in clear text.
    Secret("fetcher-db-verifier", "verifier", of="fetcher-db-password"),
    Secret("api-db-verifier", "verifier", of="api-db-password"),
    Secret("monitor-db-verifier", "verifier", of="monitor-db-password"),
    Secret("alerts-db-verifier", "verifier", of="alerts-db-password"),
)
BY_NAME = {secret.name: secret for secret in SECRETS}

# Each market-data vendor's key files: every one must be filled for the vendor to be used. The
# fetcher gets them all, empty or not, so a chain of several vendors finds each its own.
VENDOR_KEYS: dict[str, tuple[str, ...]] = {
    "finnhub": ("finnhub-api-key",),
    "twelvedata": ("twelvedata-api-key",),
    "alpaca": ("alpaca-api-key-id", "alpaca-api-secret-key"),
}

# One entry per container that holds a secret; compose mounts each one's own volume only.
CONSUMERS: tuple[Consumer, ...] = (
    Consumer("postgres", 0, 0, {"postgres_password": "postgres-password"}),
    Consumer("migrate", APP_UID, APP_UID, {"migrate_database_url": "migrate-database-url"}),
    Consumer(
        "db-users",
        0,
        0,
        {
            "postgres_password": "postgres-password",
            "fetcher_db_verifier": "fetcher-db-verifier",
            "api_db_verifier": "api-db-verifier",
            "monitor_db_verifier": "monitor-db-verifier",
            "alerts_db_verifier": "alerts-db-verifier",
        },
    ),
    Consumer(
        "fetcher",
        APP_UID,
        APP_UID,
        {
            "fetcher_database_url": "fetcher-database-url",
            "finnhub_api_key": "finnhub-api-key",
            "twelvedata_api_key": "twelvedata-api-key",
            "alpaca_api_key_id": "alpaca-api-key-id",
            "alpaca_api_secret_key": "alpaca-api-secret-key",
        },
    ),
    # The API's write tokens, one a line (STOCKSTREAMER_API_TOKENS_FILE).
    Consumer(
        "api",
        APP_UID,
        APP_UID,
        {"api_database_url": "api-database-url", "api_tokens": "api-token"},
    ),
    Consumer(
        "alerts",
        APP_UID,
        APP_UID,
        {"alerts_database_url": "alerts-database-url", "alert_channels": "alert-channels.yaml"},
    ),
    Consumer("grafana", GRAFANA_UID, 0, {"grafana_admin_password": "grafana-admin-password"}),
    Consumer("postgres-exporter", NOBODY, NOBODY, {"exporter_db_password": "monitor-db-password"}),
)

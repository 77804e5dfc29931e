"""Secrets made once and kept, chosen ones winning, each consumer handed only its own files."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from services.runner.processes import ROOT
from services.secrets import CONSUMERS, SECRETS, VENDOR_KEYS, install, make, verifies


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_writes_every_secret_once_and_keeps_them(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    first = make(directory)
    assert set(first) == {s.name for s in SECRETS}
    assert len(first["postgres-password"]) == 48 and first["finnhub-api-key"] == ""
    assert first["api-database-url"] == (
        f"postgresql://stockstreamer_api:{first['api-db-password']}@postgres:5432"
        "/stockstreamer?sslmode=disable"
    )
    assert verifies(first["fetcher-db-verifier"], first["fetcher-db-password"])
    assert first["alerts-database-url"].startswith(
        f"postgresql://stockstreamer_alerts:{first['alerts-db-password']}@postgres:5432/"
    )
    assert verifies(first["alerts-db-verifier"], first["alerts-db-password"])
    # the API's token: 32 random bytes, URL-safe; the alert channels only when chosen
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first["api-token"])
    assert first["alert-channels.yaml"] == ""
    (directory / "finnhub-api-key").write_text("my-key\n")
    again = make(directory)
    assert again == {**first, "finnhub-api-key": "my-key"}
    assert _mode(directory) == 0o700


def test_make_as_root_gives_each_file_to_the_user_that_reads_it(tmp_path: Path) -> None:
    make(tmp_path)
    owners = {p.name: (p.stat().st_uid, _mode(p)) for p in tmp_path.iterdir()}
    if os.geteuid() != 0:
        assert all(mode == 0o644 for _, mode in owners.values())
        return
    assert owners["fetcher-database-url"] == (10001, 0o400)
    assert owners["grafana-admin-password"] == (472, 0o400)
    assert owners["postgres-password"] == (0, 0o400)
    assert owners["monitor-db-password"] == (0, 0o440)
    assert owners["api-token"] == (10001, 0o400)
    assert owners["alert-channels.yaml"] == (10001, 0o400)


def _install(tmp_path: Path, source: Path | None) -> tuple[Path, Path]:
    store, target = tmp_path / "store", tmp_path / "run"
    store.mkdir(exist_ok=True)
    target.mkdir(exist_ok=True)
    install(source, store, target, "postgres", 5432)
    return store, target


def test_install_hands_each_consumer_exactly_its_files(tmp_path: Path) -> None:
    store, target = _install(tmp_path, tmp_path / "no-such-dir")
    for consumer in CONSUMERS:
        box = target / consumer.name
        assert sorted(os.listdir(box)) == sorted(consumer.files), consumer.name
        for file, secret in consumer.files.items():
            assert (box / file).read_text() == (store / secret).read_text()
            assert _mode(box / file) == 0o400
            if os.geteuid() == 0:
                assert (box / file).stat().st_uid == consumer.uid
    # no password in clear text reaches db-users: verifiers only, besides its own superuser one
    db_users = target / "db-users"
    assert not any("password" in f and f != "postgres_password" for f in os.listdir(db_users))


def test_a_second_install_keeps_every_value_and_removes_strays(tmp_path: Path) -> None:
    store, target = _install(tmp_path, None)
    before = {p.name: p.read_text() for p in store.iterdir()}
    os.chmod(target / "api", 0o700)
    (target / "api" / "stray").write_text("old")
    _install(tmp_path, None)
    assert {p.name: p.read_text() for p in store.iterdir()} == before
    assert sorted(os.listdir(target / "api")) == ["api_database_url", "api_tokens"]


def test_a_chosen_value_wins_and_what_derives_from_it_follows(tmp_path: Path) -> None:
    store, target = _install(tmp_path, None)
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "api-db-password").write_text("chosen-password\n")
    (chosen / "twelvedata-api-key").write_text("td-key")
    (chosen / "finnhub-api-key").write_text("")  # an empty file chooses nothing
    _install(tmp_path, chosen)
    url = (target / "api" / "api_database_url").read_text()
    assert url.startswith("postgresql://stockstreamer_api:chosen-password@postgres:5432/")
    assert verifies((target / "db-users" / "api_db_verifier").read_text(), "chosen-password")
    assert (target / "fetcher" / "twelvedata_api_key").read_text() == "td-key"
    assert (store / "api-db-password").read_text() == "chosen-password"


def test_a_chain_of_vendors_finds_every_key_it_was_given(tmp_path: Path) -> None:
    """Alpaca's two keys and Finnhub's, chosen at once, reach the fetcher each in its own file;
    a vendor left out keeps an empty file (it is then refused only if the chain names it)."""
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    given = {
        "alpaca-api-key-id": "PKTEST0123456789",
        "alpaca-api-secret-key": "s3cr3t/with+chars=",
        "finnhub-api-key": "fh-key",
    }
    for name, value in given.items():
        (chosen / name).write_text(value + "\n")
    _, target = _install(tmp_path, chosen)
    fetcher = next(c for c in CONSUMERS if c.name == "fetcher")
    vendor_files = {
        f: s for f, s in fetcher.files.items() if s in set().union(*VENDOR_KEYS.values())
    }
    assert set(vendor_files.values()) == set().union(*VENDOR_KEYS.values()), "every vendor's keys"
    for file, secret in vendor_files.items():
        assert (target / "fetcher" / file).read_text() == given.get(secret, ""), file
    assert "alpaca" not in " ".join(os.listdir(target / "api")), "the fetcher's alone"


def test_the_command_runs_on_a_bare_python_without_our_dependencies(tmp_path: Path) -> None:
    # -S: no site-packages, as on a server where deploy/make-secrets runs with the system python3
    result = subprocess.run(
        [sys.executable, "-S", "-m", "services.secrets", "make", str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "postgres-password" in result.stdout
    assert (tmp_path / "s" / "postgres-password").read_text() not in result.stdout


def test_a_password_chosen_anew_carries_its_url_and_verifier_along(tmp_path: Path) -> None:
    """deploy/make-secrets wrote every file; then a password is edited by hand (quotes and @
    in it): its URL and verifier follow, while a URL that matches (another host) is kept."""
    chosen = tmp_path / "chosen"
    make(chosen)
    (chosen / "api-db-password").write_text("it's @ new")
    url = "postgresql://stockstreamer:{}@db.example:5432/stockstreamer?sslmode=verify-full"
    password = (chosen / "postgres-password").read_text()
    (chosen / "migrate-database-url").write_text(url.format(password))
    store, target = _install(tmp_path, chosen)
    api_url = (target / "api" / "api_database_url").read_text()
    assert api_url.startswith("postgresql://stockstreamer_api:it%27s%20%40%20new@postgres:5432/")
    assert verifies((target / "db-users" / "api_db_verifier").read_text(), "it's @ new")
    assert (target / "migrate" / "migrate_database_url").read_text() == url.format(password)
    again = make(chosen)
    assert again["api-database-url"] == api_url, "make-secrets itself follows too"


def test_chosen_tokens_and_channels_reach_their_consumers_as_written(tmp_path: Path) -> None:
    """Several tokens, one a line (a rotation under way), and the alert channels' YAML: each
    reaches its one consumer whole; left out, the token made before is kept."""
    store, target = _install(tmp_path, None)
    made = (target / "api" / "api_tokens").read_text()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", made)
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    tokens = "# old, until every client has the new one\nold-token-0123456789\nnew-token-9876543210"
    channels = "phone: ntfy://ntfy.sh/my-topic\nops: json://hooks.example/alerts\n"
    (chosen / "api-token").write_text(tokens + "\n")
    (chosen / "alert-channels.yaml").write_text(channels)
    _install(tmp_path, chosen)
    assert (target / "api" / "api_tokens").read_text() == tokens
    assert (target / "alerts" / "alert_channels").read_text() == channels.strip()
    for consumer in CONSUMERS:
        if consumer.name not in ("api", "alerts"):
            assert not {"api_tokens", "alert_channels"} & set(os.listdir(target / consumer.name))
    (chosen / "api-token").unlink()
    _install(tmp_path, chosen)
    assert (target / "api" / "api_tokens").read_text() == tokens, "the chosen value was kept"
    assert (store / "api-token").read_text() == tokens

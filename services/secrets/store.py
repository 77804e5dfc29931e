"""Secret files: made once and kept, a chosen value always winning, then handed out."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from services.secrets.layout import CONSUMERS, GRAFANA_UID, NOBODY, SECRETS, Secret
from services.secrets.scram import scram_verifier, verifies


def new_password() -> str:
    """48 hex digits: 192 random bits, safe in a URL and in a shell as they are."""
    return secrets.token_hex(24)


def new_token() -> str:
    """An API token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def database_url(user: str, password: str, host: str, port: int) -> str:
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"
        "/stockstreamer?sslmode=disable"
    )


class Store:
    """A directory of secret files, one secret a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, name: str) -> str | None:
        """The file's contents without surrounding whitespace; None when there is no file."""
        try:
            return (self.path / name).read_text().strip()
        except FileNotFoundError:
            return None

    def write(
        self, name: str, value: str, mode: int = 0o600, owner: tuple[int, int] | None = None
    ) -> None:
        """Replace the file in one step (a reader sees the old value or the new, never half)."""
        target = self.path / name
        if target.exists() and self.read(name) == value and owner is None:
            os.chmod(target, mode)
            return
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(value)
            os.chmod(tmp, mode)
            if owner is not None:
                os.chown(tmp, *owner)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def resolve(
    store: Store,
    chosen: Store | None,
    host: str,
    port: int,
    which: Iterable[Secret] = SECRETS,
) -> dict[str, str]:
    """Every secret's value, kept in `store`: a non-empty file in `chosen` wins, else the kept
    value, else a new one (passwords, the API token) or empty (vendor keys, the alert channels);
    URLs and verifiers follow.

    A chosen URL or verifier wins only while it still matches its password: one chosen anew
    (or a password file edited after deploy/make-secrets wrote the URL) makes them follow it.
    `which`: these secrets alone (in SECRETS' order), for `make run`'s database.
    """
    values: dict[str, str] = {}
    for secret in which:
        given = chosen.read(secret.name) if chosen is not None else None
        if given and not _matches(secret, given, values):
            given = None
        kept = store.read(secret.name)
        value = given or _derive(secret, values, kept, host, port)
        store.write(secret.name, value)
        values[secret.name] = value
    return values


def _matches(secret: Secret, value: str, values: dict[str, str]) -> bool:
    """Whether a URL or verifier was made from its password (a chosen host or port is kept)."""
    if secret.kind == "url":
        return unquote(urlsplit(value).password or "") == values[secret.of or ""]
    if secret.kind == "verifier":
        return verifies(value, values[secret.of or ""])
    return True


def _derive(secret: Secret, values: dict[str, str], kept: str | None, host: str, port: int) -> str:
    if secret.kind == "password":
        return kept or new_password()
    if secret.kind == "token":
        return kept or new_token()
    if secret.kind == "key":
        return kept or ""
    password = values[secret.of or ""]
    if secret.kind == "url":
        return database_url(secret.user or "", password, host, port)
    # The same verifier while the password stays, so nothing changes on a second start.
    return kept if kept and verifies(kept, password) else scram_verifier(password)


def make(directory: Path, host: str = "postgres", port: int = 5432) -> dict[str, str]:
    """Every secret file in `directory`, keeping those that exist (`deploy/make-secrets`).

    As root (a server), each file is readable only by the user that reads it in its container;
    otherwise the directory is private to you and its files readable through it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    store = Store(directory)
    values = resolve(store, store, host, port)
    as_root = os.geteuid() == 0
    owners = dict.fromkeys(values, (0, 0))
    if as_root:
        for consumer in CONSUMERS:
            for name in consumer.files.values():
                if owners[name] == (0, 0):
                    owners[name] = (consumer.uid, consumer.gid)
        owners["monitor-db-password"] = (0, NOBODY)  # db-users (root) and the exporter read it
        owners["grafana-admin-password"] = (GRAFANA_UID, 0)
    for name, value in values.items():
        if as_root:
            mode = 0o440 if name == "monitor-db-password" else 0o400
            store.write(name, value, mode, owners[name])
        else:
            store.write(name, value, 0o644)
    return values


def install(source: Path | None, store_dir: Path, target: Path, host: str, port: int) -> None:
    """Hand each consumer its own files in `target/<consumer>` (one volume each), as its user.

    `source` holds chosen values (may be absent or partial), `store_dir` what was made before.
    A consumer's directory holds exactly its files: anything else there is removed.
    """
    chosen = Store(source) if source is not None and source.is_dir() else None
    values = resolve(Store(store_dir), chosen, host, port)
    owned = os.geteuid() == 0
    for consumer in CONSUMERS:
        directory = target / consumer.name
        directory.mkdir(exist_ok=True)
        if owned:
            # Ours again while we write: the compose one-shot has CHOWN but not DAC_OVERRIDE,
            # so it could not write into the 0500 directory a previous start gave the consumer.
            os.chown(directory, 0, 0)
        directory.chmod(0o700)
        box = Store(directory)
        for file, secret in consumer.files.items():
            box.write(file, values[secret], 0o400, (consumer.uid, consumer.gid) if owned else None)
        for stale in set(os.listdir(directory)) - set(consumer.files):
            (directory / stale).unlink()
        directory.chmod(0o500)
        if owned:
            os.chown(directory, consumer.uid, consumer.gid)

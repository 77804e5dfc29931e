"""The API's write token for `make run`: made once under `.data/secrets`, shown once."""

from __future__ import annotations

from pathlib import Path

from services.secrets.layout import SECRETS
from services.secrets.store import Store, new_token

# The file's name, as compose's secrets name it (api-token).
NAME = next(secret.name for secret in SECRETS if secret.kind == "token")


def ensure_api_token(secrets_dir: Path) -> tuple[Path, str | None]:
    """The token file (yours alone, 0600), made unless it exists; the token when this call made
    it, so that the banner shows it that once and never again."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    store = Store(secrets_dir)
    if store.read(NAME):  # kept, or tokens of your choosing (one a line)
        (secrets_dir / NAME).chmod(0o600)
        return secrets_dir / NAME, None
    token = new_token()
    store.write(NAME, token, 0o600)
    return secrets_dir / NAME, token

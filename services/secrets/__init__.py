"""The stack's secrets: made once, kept, and handed to each consumer as its own files only.

Standard library only: `deploy/make-secrets` runs it with a host's plain `python3`.
"""

from __future__ import annotations

from services.secrets.layout import CONSUMERS, SECRETS, VENDOR_KEYS, Consumer, Secret
from services.secrets.scram import scram_verifier, verifies
from services.secrets.store import Store, install, make

__all__ = [
    "CONSUMERS",
    "SECRETS",
    "VENDOR_KEYS",
    "Consumer",
    "Secret",
    "Store",
    "install",
    "make",
    "scram_verifier",
    "verifies",
]

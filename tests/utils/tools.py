"""Outside programs the tests drive (Debian packages, Terraform, a Docker engine)."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(message: str) -> NoReturn:
    """A tool is absent: fail in CI (`.ci/run` provides every one), skip elsewhere."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_tool(*names: str, package: str) -> str:
    """The first of `names` on PATH, else `missing` naming the Debian package that has it."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    missing(f"{' or '.join(names)} not on PATH (Debian: apt-get install {package})")

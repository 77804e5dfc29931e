"""Every service's settings as one Markdown table (`python -m services.runner.settings_doc`)."""

from __future__ import annotations

import importlib
import sys

from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from services.common.config import env_names

# (service, "module:Class") — the one list of settings classes, used by the docs and their tests.
SETTINGS_CLASSES: list[tuple[str, str]] = [
    ("all", "services.common.config:CommonSettings"),
    ("fetcher", "services.fetcher.config:FetcherSettings"),
    ("api", "services.api.config:ApiSettings"),
    ("dashboard", "services.dashboard.config:DashboardSettings"),
    ("make run", "services.runner.__main__:RunnerSettings"),
]


def load(path: str) -> type[BaseSettings]:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, BaseSettings)):
        raise TypeError(f"{path} is not a settings class")
    return cls


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, services, default, meaning) for every setting, each variable once."""
    seen: dict[str, list[str]] = {}
    table: dict[str, tuple[str, str]] = {}
    common = set(env_names(load(SETTINGS_CLASSES[0][1])))
    for service, path in SETTINGS_CLASSES:
        cls = load(path)
        for env, field_name in env_names(cls).items():
            if env in common and service != "all":
                continue
            info = cls.model_fields[field_name]
            if info.default is not PydanticUndefined:
                default = info.default
            elif info.default_factory is not None:
                default = info.default_factory()  # type: ignore[call-arg]
            else:
                default = None
            if isinstance(default, list):
                default = ",".join(map(str, default))
            shown = "" if default in (None, "") else f"`{default}`"
            if "secret" in field_name or "key" in field_name or "password" in field_name:
                shown = ""
            seen.setdefault(env, []).append(service)
            table.setdefault(env, (shown, (info.description or "").replace("|", "\\|")))
    return [(env, ", ".join(seen[env]), *table[env]) for env in table]


def markdown() -> str:
    lines = ["| variable | used by | default | meaning |", "|---|---|---|---|"]
    lines += [
        f"| `{env}` | {svc} | {default} | {meaning} |" for env, svc, default, meaning in rows()
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown() + "\n")

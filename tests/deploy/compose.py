"""Read docker-compose.yml the way Compose does: `.env` interpolation, override tags, settings."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from services.common.config import env_names
from services.runner.settings_doc import SETTINGS_CLASSES, load
from services.secrets import CONSUMERS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RDS_OVERRIDE = ROOT / "deploy" / "compose.rds.yaml"
OBSERVABILITY_COMPOSE = ROOT / "deploy" / "observability" / "compose.yaml"
SERVER_OVERRIDE = ROOT / "deploy" / "compose.server.yaml"
WEB_OVERRIDE = ROOT / "deploy" / "compose.web.yaml"
ENV_EXAMPLE = ROOT / ".env.example"

# compose service → the settings-doc service whose class it runs (migrate is `make migrate`).
SERVICE_SETTINGS = {
    "fetcher": "fetcher",
    "api": "api",
    "alerts": "alerts",
    "dashboard": "dashboard",
    "migrate": "make run",
}


class MissingVariable(Exception):
    """A `${NAME:?message}` variable is unset or empty."""


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!reset, !override) read as the plain values they carry."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open() as f:
        data = yaml.load(f, Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(data, dict)
    return data


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` (nested), `${VAR:?error}` and `$$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= text[j] == "}"
                j += 1
            match = re.fullmatch(r"(\w+)(?:(:?[-?])(.*))?", text[i + 2 : j - 1], re.DOTALL)
            assert match, f"bad interpolation {text[i:j]}"
            name, op, arg = match.groups()
            value = env.get(name)
            if op in (":?", "?") and not value:
                raise MissingVariable(f"{name}: {arg}")
            if op == ":-" and not value or op == "-" and value is None:
                value = interpolate(arg, env)
            out.append(value or "")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def interpolate_all(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate_all(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_all(v, env) for v in value]
    if isinstance(value, str):
        return interpolate(value, env)
    return value


def variables_used(path: Path) -> set[str]:
    """Every name a compose file interpolates."""
    return set(re.findall(r"(?<!\$)\$\{(\w+)", path.read_text()))


def dotenv(text: str) -> dict[str, str]:
    """The KEY=VALUE lines Compose would read from a `.env` with this text (comments skipped)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]\w*=", line))
    return dict(pairs)


def documented(text: str) -> set[str]:
    """Every name `.env.example` mentions, set or commented out."""
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def settings_class(service: str) -> type[BaseSettings]:
    return load(dict(SETTINGS_CLASSES)[SERVICE_SETTINGS[service]])


def setting_names(cls: type[BaseSettings]) -> set[str]:
    """Environment names a settings class reads: its fields, and `*_FILE` secrets in its code."""
    names = set(env_names(cls))
    for base in cls.__mro__:
        if issubclass(base, BaseSettings) and base.__module__.startswith("services."):
            source = inspect.getsource(importlib.import_module(base.__module__))
            names |= set(re.findall(r'"([A-Z][A-Z0-9_]*_FILE)"', source))
    return names


def all_setting_names() -> set[str]:
    return set().union(*(setting_names(load(path)) for _, path in SETTINGS_CLASSES))


def make_secrets(directory: Path) -> Path:
    """deploy/make-secrets into `directory`, as a user would run it before `compose up`."""
    result = subprocess.run(  # noqa: S603
        [str(ROOT / "deploy" / "make-secrets"), str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def secret_paths(secrets_dir: Path) -> dict[str, str]:
    """Where each container's `/run/secrets/<file>` comes from among deploy/make-secrets' files."""
    return {
        f"/run/secrets/{file}": str(secrets_dir / secret)
        for consumer in CONSUMERS
        for file, secret in consumer.files.items()
    }


def mounts(spec: dict[str, Any]) -> dict[str, str]:
    """A service's short-syntax volumes: container path → `source[:mode]`."""
    out = {}
    for volume in spec.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = ":".join([source, *mode])
    return out


def secrets_volume(spec: dict[str, Any]) -> str | None:
    """The volume a service mounts at /run/secrets (read-only), if any."""
    mounted = mounts(spec).get("/run/secrets")
    if mounted is None:
        return None
    source, _, mode = mounted.partition(":")
    assert mode == "ro", f"{source} is mounted writable"
    return source

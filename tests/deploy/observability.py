"""The observability profile's files, the tools that check them, and metric names in PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
PROFILE_COMPOSE = OBSERVABILITY / "compose.yaml"
PROMETHEUS_DIR = OBSERVABILITY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
GRAFANA_DIR = OBSERVABILITY / "grafana"
DASHBOARD_JSON = GRAFANA_DIR / "dashboards" / "stockstreamer.json"
RUNBOOK = ROOT / "docs" / "operations.md"

# Series Prometheus makes itself rather than scrapes.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# PromQL words that look like metric names in an expression.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def dashboard_exprs(board: dict[str, Any]) -> dict[str, str]:
    """`panel title/refId` → PromQL, for every query of every panel."""
    return {
        f"{p['title']}/{t['refId']}": t["expr"] for p in panels(board) for t in p.get("targets", [])
    }


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, labels, keywords or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.groups()
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def exported_names(exposition: str) -> set[str]:
    """Series names a /metrics page offers, including labelled families with no child yet."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        elif family.type == "summary":
            names |= {f"{family.name}_{s}" for s in ("sum", "count", "created")}
        names |= {sample.name for sample in family.samples}
    return names


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")

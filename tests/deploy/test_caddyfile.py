"""deploy/Caddyfile through Caddy's own adapter: the /grafana route exists only when switched on."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.utils.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
CADDYFILE = ROOT / "deploy" / "Caddyfile"
SWITCH = "STOCKSTREAMER_GRAFANA_ROUTE"
GRAFANA = "grafana:3000"


@pytest.fixture(scope="module")
def caddy() -> str:
    """Debian's `caddy` package (.ci/run installs it); CI fails rather than skips without it."""
    return require_tool("caddy", package="caddy")


@pytest.fixture(scope="module")
def caddyfile(caddy: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Caddyfile as this caddy can read it.

    The image runs Caddy 2.10; Debian's package is 2.6, which predates the `versions` option of
    dynamic upstreams (2.7). For an older caddy that one line is dropped, and only that line.
    """
    version = subprocess.run(  # noqa: S603
        [caddy, "version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    match = re.match(r"v?(\d+)\.(\d+)", version.strip())
    assert match, version
    text = CADDYFILE.read_text()
    if (int(match[1]), int(match[2])) < (2, 7):
        text, dropped = re.subn(r"^\s*versions ipv4\n", "", text, flags=re.MULTILINE)
        assert dropped == 1, "the compatibility edit no longer matches the Caddyfile"
    path = tmp_path_factory.mktemp("caddy") / "Caddyfile"
    path.write_text(text)
    return path


def adapt(caddy: str, caddyfile: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSTREAMER_")}
    return subprocess.run(  # noqa: S603
        [caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def config(caddy: str, caddyfile: Path, **env: str) -> dict[str, Any]:
    result = adapt(caddy, caddyfile, **env)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def route_lists(node: Any) -> Iterator[list[dict[str, Any]]]:
    """Every list of routes, the server's own and those nested in subroutes."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "routes" and isinstance(value, list):
                yield value
            yield from route_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from route_lists(item)


def paths(route: dict[str, Any]) -> set[str]:
    return {p for m in route.get("match", []) for p in m.get("path", [])}


def is_grafana(route: dict[str, Any]) -> bool:
    return "/grafana/*" in paths(route)


def dials(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["dial"]} if isinstance(node.get("dial"), str) else set()
        return found.union(*(dials(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(dials(v) for v in node))
    return set()


def without_grafana(node: Any) -> Any:
    """The configuration minus the Grafana route, group names aside (Caddy numbers them)."""
    if isinstance(node, dict):
        return {k: without_grafana(v) for k, v in node.items() if k != "group"}
    if isinstance(node, list):
        return [without_grafana(v) for v in node if not (isinstance(v, dict) and is_grafana(v))]
    return node


def policy(route: dict[str, Any]) -> str:
    for handler in route["handle"][0]["routes"][0]["handle"]:
        if handler["handler"] == "headers":
            (value,) = handler["response"]["set"]["Content-Security-Policy"]
            assert isinstance(value, str)
            return value
    raise AssertionError("the route sets no Content-Security-Policy")


@pytest.mark.parametrize("site", [":80", "stocks.example.com"])
def test_grafana_route_exists_only_when_switched_on(caddy: str, caddyfile: Path, site: str) -> None:
    unset = config(caddy, caddyfile, STOCKSTREAMER_SITE_ADDRESS=site)
    off = config(caddy, caddyfile, STOCKSTREAMER_SITE_ADDRESS=site, **{SWITCH: "off"})
    on = config(caddy, caddyfile, STOCKSTREAMER_SITE_ADDRESS=site, **{SWITCH: "on"})
    assert unset == off, "off is the default"
    for name, adapted in (("unset", unset), ("off", off)):
        assert GRAFANA not in dials(adapted), f"{name}: no upstream that may not exist"
        assert not [r for rs in route_lists(adapted) for r in rs if is_grafana(r)], name
    assert GRAFANA in dials(on)
    # Switching on adds that one route and changes nothing else; /grafana otherwise falls
    # through to the dashboard's catch-all exactly as before.
    assert without_grafana(on) == without_grafana(off)


def test_grafana_route_comes_after_the_private_paths_and_before_the_dashboard(
    caddy: str, caddyfile: Path
) -> None:
    on = config(caddy, caddyfile, **{SWITCH: "on"})
    (routes,) = [rs for rs in route_lists(on) if any(is_grafana(r) for r in rs)]
    (index,) = [i for i, r in enumerate(routes) if is_grafana(r)]
    assert paths(routes[index]) == {"/grafana", "/grafana/*"}
    private = [i for i, r in enumerate(routes) if "/metrics" in paths(r)]
    # The handle groups with no matcher: only the dashboard's (the site's headers are no group).
    catch_all = [i for i, r in enumerate(routes) if "match" not in r and "group" in r]
    assert private and private[0] < index, "/metrics and /docs stay 404 first"
    assert catch_all == [len(routes) - 1], "the dashboard takes everything else, last"
    assert dials(routes[-1]) == {"dashboard:5006"}
    assert GRAFANA in dials(routes[index]) and GRAFANA not in dials(routes[:index] + routes[-1:])


def test_grafana_gets_its_own_content_security_policy(caddy: str, caddyfile: Path) -> None:
    on = config(caddy, caddyfile, **{SWITCH: "on"})
    (routes,) = [rs for rs in route_lists(on) if any(is_grafana(r) for r in rs)]
    (grafana,) = [r for r in routes if is_grafana(r)]
    grafana_policy = policy(grafana)
    assert grafana_policy != policy(routes[-1]), "not the dashboard's"
    directives = dict(d.strip().split(" ", 1) for d in grafana_policy.split(";"))
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert "'unsafe-eval'" in directives["script-src"], "Grafana compiles code in places"
    for name in ("default-src", "script-src", "connect-src"):
        assert "*" not in directives[name] and "http" not in directives[name], name
    # HSTS, nosniff and the frame ban are the site's, for every route Grafana's included.
    site_headers = [
        h["response"]
        for r in routes
        for h in r["handle"]
        if h["handler"] == "headers" and "Strict-Transport-Security" in h["response"].get("set", {})
    ]
    assert site_headers, "the site-wide headers"
    assert site_headers[0]["set"]["X-Content-Type-Options"] == ["nosniff"]
    assert site_headers[0]["set"]["X-Frame-Options"] == ["DENY"]


def test_any_other_switch_value_stops_caddy(caddy: str, caddyfile: Path) -> None:
    result = adapt(caddy, caddyfile, **{SWITCH: "yes"})
    assert result.returncode != 0
    assert "grafana-route-yes" in result.stderr

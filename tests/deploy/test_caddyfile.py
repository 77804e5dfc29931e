"""deploy/Caddyfile through Caddy's own adapter, and run by caddy in front of stand-in services.

The adapter shows the /grafana route exists only when switched on, the timeouts and body limits;
the live proxy shows streams outliving the timeouts that cut slow clients.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.utils.tools import missing, require_tool

ROOT = Path(__file__).resolve().parents[2]
CADDYFILE = ROOT / "deploy" / "Caddyfile"
SWITCH = "STOCKSTREAMER_GRAFANA_ROUTE"
GRAFANA = "grafana:3000"


@pytest.fixture(scope="module")
def caddy() -> str:
    """Debian's `caddy` package (.ci/run installs it); CI fails rather than skips without it."""
    return require_tool("caddy", package="caddy")


@pytest.fixture(scope="module")
def caddy_version(caddy: str) -> tuple[int, int]:
    version = subprocess.run(  # noqa: S603
        [caddy, "version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    match = re.match(r"v?(\d+)\.(\d+)", version.strip())
    assert match, version
    return int(match[1]), int(match[2])


@pytest.fixture(scope="module")
def caddyfile(caddy_version: tuple[int, int], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Caddyfile as this caddy can read it.

    The image runs Caddy 2.10; Debian's package is 2.6, which predates the `versions` option of
    dynamic upstreams (2.7). For an older caddy that one line is dropped, and only that line.
    """
    text = CADDYFILE.read_text()
    if caddy_version < (2, 7):
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


def servers(adapted: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = adapted["apps"]["http"]["servers"]
    return found


def handlers(node: Any, name: str) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("handler") == name:
            yield node
        for value in node.values():
            yield from handlers(value, name)
    elif isinstance(node, list):
        for item in node:
            yield from handlers(item, name)


@pytest.mark.parametrize("site", [":80", "stocks.example.com"])
def test_timeouts_stop_slow_clients_but_never_cut_a_response(
    caddy: str, caddyfile: Path, site: str
) -> None:
    adapted = config(caddy, caddyfile, STOCKSTREAMER_SITE_ADDRESS=site, **{SWITCH: "on"})
    for name, server in servers(adapted).items():
        assert server["read_header_timeout"] == 10 * 10**9, name
        assert server["read_timeout"] == 30 * 10**9, name
        assert server["idle_timeout"] == 120 * 10**9, name
        assert server["max_header_bytes"] == 16_000, name
        # A write timeout would end every SSE stream and websocket at that age.
        assert "write_timeout" not in server, name


def test_the_client_address_is_never_taken_from_the_client(caddy: str, caddyfile: Path) -> None:
    """X-Forwarded-For upstream is the connecting address: nothing trusts or copies the client's."""
    adapted = config(caddy, caddyfile, STOCKSTREAMER_SITE_ADDRESS="stocks.example.com")
    for name, server in servers(adapted).items():
        assert "trusted_proxies" not in server, name
        assert "client_ip_headers" not in server, name
    proxies = list(handlers(adapted, "reverse_proxy"))
    assert len(proxies) == 2, "the API and the dashboard"
    for proxy in proxies:
        assert "headers" not in proxy, "no header_up: Caddy's own X-Forwarded-* go upstream"


def test_every_proxied_route_bounds_its_request_body(caddy: str, caddyfile: Path) -> None:
    adapted = config(caddy, caddyfile, **{SWITCH: "on"})
    (routes,) = [rs for rs in route_lists(adapted) if any(is_grafana(r) for r in rs)]
    for route in routes:
        if not dials(route) and not list(handlers(route, "reverse_proxy")):
            continue  # the 404s and the site's headers
        (limit,) = handlers(route, "request_body")
        expected = 4_000_000 if is_grafana(route) else 16_000
        assert limit["max_size"] == expected, paths(route) or "the dashboard"


# The live proxy: the Caddyfile run by caddy in a network namespace of its own, where the names
# api, dashboard and grafana resolve to stand-ins on its loopback (proxy_probe.py), with its
# timeouts shortened to SHORT so that outliving them takes seconds.
PROXY_PROBE = Path(__file__).with_name("proxy_probe.py")
SHORT = 1.0


@dataclass
class LiveProxy:
    ip: str
    namespace: str

    def probe(self, *args: str) -> dict[str, Any]:
        result = subprocess.run(  # noqa: S603
            [self.ip, "netns", "exec", self.namespace, sys.executable, str(PROXY_PROBE), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return parsed


def shortened(caddyfile: Path, directory: Path) -> Path:
    text, count = re.subn(
        r"^(\s*(?:read_header|read_body|idle)) \S+$",
        rf"\1 {SHORT:g}s",
        caddyfile.read_text(),
        flags=re.MULTILINE,
    )
    assert count == 3, "the three timeouts, each shortened"
    path = directory / "Caddyfile"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def live_proxy(
    caddy: str, caddyfile: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveProxy]:
    if os.geteuid() != 0:
        missing("a network namespace of its own needs root")
    ip = require_tool("ip", package="iproute2")
    tmp = tmp_path_factory.mktemp("live-proxy")
    namespace = f"ss-proxy-{os.getpid()}"
    # `ip netns exec` shows a namespace's own /etc/netns/NAME/hosts as /etc/hosts.
    etc = Path("/etc/netns") / namespace
    live = LiveProxy(ip=ip, namespace=namespace)
    processes: list[subprocess.Popen[str]] = []
    try:
        etc.mkdir(parents=True)
        (etc / "hosts").write_text("127.0.0.1 localhost api dashboard grafana\n")
        subprocess.run([ip, "netns", "add", namespace], check=True)  # noqa: S603
        subprocess.run(  # noqa: S603
            [ip, "netns", "exec", namespace, ip, "link", "set", "lo", "up"], check=True
        )
        exec_in = [ip, "netns", "exec", namespace]
        backends = subprocess.Popen(  # noqa: S603
            [*exec_in, sys.executable, str(PROXY_PROBE), "serve"], stdout=subprocess.PIPE, text=True
        )
        processes.append(backends)
        assert backends.stdout is not None
        assert json.loads(backends.stdout.readline()) == {"serving": True}
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSTREAMER_")}
        environ |= {"XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config")}
        log = (tmp / "caddy.log").open("w")
        proxy = subprocess.Popen(  # noqa: S603
            [*exec_in, caddy, "run", "--adapter", "caddyfile"]
            + ["--config", str(shortened(caddyfile, tmp))],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        processes.append(proxy)
        for _ in range(100):
            try:
                if live.probe("forwarded")["x-forwarded-for"]:
                    break
            except AssertionError:
                assert proxy.poll() is None, (tmp / "caddy.log").read_text()
                time.sleep(0.1)
        else:
            raise AssertionError((tmp / "caddy.log").read_text())
        yield live
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
        subprocess.run([ip, "netns", "delete", namespace], check=False)  # noqa: S603
        shutil.rmtree(etc, ignore_errors=True)


def test_sse_streams_and_websockets_outlive_every_timeout(live_proxy: LiveProxy) -> None:
    seconds = 4 * SHORT
    stream = live_proxy.probe("sse", f"{seconds:g}")
    assert stream["events"] == seconds / 0.25 and stream["seconds"] >= seconds, stream
    socket_ = live_proxy.probe("ws", f"{seconds:g}")
    assert socket_["echoes"] == seconds / 0.25 and socket_["seconds"] >= seconds, socket_


def test_headers_sent_slowly_are_cut_off(live_proxy: LiveProxy) -> None:
    closed_after = live_proxy.probe("slow-headers")["closed_after"]
    assert closed_after is not None and SHORT <= closed_after <= 3 * SHORT, closed_after


def test_an_idle_kept_alive_connection_is_closed(live_proxy: LiveProxy) -> None:
    result = live_proxy.probe("idle")
    assert result["status"] == 200
    assert result["closed_after"] is not None and result["closed_after"] <= 3 * SHORT, result


def test_a_request_body_past_the_limit_is_refused(
    live_proxy: LiveProxy, caddy_version: tuple[int, int]
) -> None:
    assert live_proxy.probe("post", "1000") == {"status": 200}
    # Caddy 2.7 and later answer 413; 2.6 (Debian's) reports the cut-off body as a proxy error.
    refused = 413 if caddy_version >= (2, 7) else 502
    assert live_proxy.probe("post", "100000") == {"status": refused}


def test_a_client_cannot_choose_its_forwarded_address(live_proxy: LiveProxy) -> None:
    assert live_proxy.probe("forwarded") == {"x-forwarded-for": ["127.0.0.1"]}

"""The watchlist and alerts in a real browser, on the real stack (PostgreSQL, fetcher on the
simulator, API, alerts service and dashboard, the last two with a write token)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from services.runner.embedded_db import free_port
from services.runner.processes import ServiceProcess
from tests.e2e.conftest import CHROMIUM, require_chromium
from tests.e2e.test_dashboard import BROWSER_ARGS

pytestmark = pytest.mark.browser

TOKEN = "e2e-write-token-0123456789abcdef"
CONFIGURED = ["AAPL", "INTC"]
ADDED = "AMD"

# A stand-in for the browser's notifications (a headless browser shows none): it records what
# the page asks to show; the permission, not yet asked for, is given when asked.
NOTIFICATIONS_JS = """
window.__notifications = [];
window.__permission = 'default';
window.Notification = class {
  constructor(title, options) { window.__notifications.push({title, ...options}); }
  static get permission() { return window.__permission; }
  static requestPermission() { window.__permission = 'granted'; return Promise.resolve('granted'); }
};
"""
# Every state the page shows for a symbol, in order, as the dashboard sends the changes.
RECORD_JS = """
(symbol) => {
  const doc = Bokeh.documents[0];
  window.__states = [];
  const look = () => {
    const model = doc.get_model_by_name('watch_' + symbol);
    const found = model && /data-state='(\\w+)'/.exec(model.text);
    const states = window.__states;
    if (found && states[states.length - 1] !== found[1]) states.push(found[1]);
  };
  // after the change's message is applied whole (models are made before their properties)
  doc.on_change(() => queueMicrotask(look));
  look();
}
"""
# What the page shows of a symbol, from the models drawn (BokehJS forgets models taken off the
# page only a while later, so a look-up by name would still find them).
PAGE_JS = """
(symbol) => {
  const doc = window.Bokeh && Bokeh.documents[0];
  if (!doc || !doc.get_model_by_name('status')) return null;
  const text = (name) => { const m = doc.get_model_by_name(name); return m ? m.text : null; };
  const chart = doc.get_model_by_name('chart');
  const mine = chart.renderers.filter((r) => r.name === symbol || r.name.endsWith('_' + symbol));
  const line = mine.find((r) => r.name === 'line_' + symbol);
  const labels = doc.get_model_by_name('legend').items.map((i) => i.label.value);
  const entries = doc.get_model_by_name('watchlist_rows').children.map((r) => r.children[0]);
  const entry = entries.find((d) => d.name === 'watch_' + symbol);
  return {
    status: text('status'),
    entry: entry ? entry.text : null,
    message: text('watchlist_message'),
    alerts: text('alerts'),
    ts: line ? Array.from(line.data_source.data.ts) : null,
    drawn: [...mine.map((r) => r.name), ...labels.filter((l) => l === symbol)],
    picked: Array.from(doc.get_model_by_name('symbols').value),
    rows: Array.from(doc.get_model_by_name('latest_source').data.symbol),
    states: window.__states || [],
    notifications: window.__notifications || [],
    notify_label: doc.get_model_by_name('notify_button').label,
  };
}
"""


@dataclass
class WritableStack:
    processes: list[ServiceProcess]
    api_url: str
    dashboard_url: str


@pytest.fixture
def writable_stack(database_url: str, tmp_path: Path) -> Iterator[WritableStack]:
    require_chromium()
    api_port, dashboard_port, alerts_port = free_port(), free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    processes = [
        ServiceProcess(
            "services.fetcher",
            {
                "DATABASE_URL": database_url,
                "STOCKSTREAMER_SYMBOLS": ",".join(CONFIGURED),
                "STOCKSTREAMER_PRICE_INTERVAL": "0.25",
                "STOCKSTREAMER_FETCHER_METRICS_PORT": "0",
                "STOCKSTREAMER_BACKFILL": "2d",  # a new symbol's history: two days
            },
        ),
        ServiceProcess(
            "services.api",
            {
                "DATABASE_URL": database_url,
                "STOCKSTREAMER_API_PORT": str(api_port),
                "STOCKSTREAMER_API_TOKENS_FILE": str(token_file),
            },
        ),
        ServiceProcess(
            "services.alerts",
            {"DATABASE_URL": database_url, "STOCKSTREAMER_ALERTS_PORT": str(alerts_port)},
        ),
        ServiceProcess(
            "services.dashboard",
            {
                "STOCKSTREAMER_API_URL": api_url,
                "STOCKSTREAMER_DASHBOARD_PORT": str(dashboard_port),
                "STOCKSTREAMER_DASHBOARD_MAX_POINTS": "3600",
                "STOCKSTREAMER_DASHBOARD_RECONNECT_MAX": "1",
                "STOCKSTREAMER_DASHBOARD_API_TOKEN_FILE": str(token_file),
            },
        ),
    ]
    try:
        for process in processes:
            process.start()
        processes[1].wait_http(f"{api_url}/readyz")
        processes[2].wait_http(f"http://127.0.0.1:{alerts_port}/readyz")
        dashboard_url = f"http://127.0.0.1:{dashboard_port}/"
        processes[3].wait_http(f"{dashboard_url}healthz")
        yield WritableStack(processes, api_url, dashboard_url)
    finally:
        for process in reversed(processes):
            process.__exit__()


def seen(
    page: Page, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30
) -> Any:
    deadline = time.monotonic() + timeout
    current: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        current = page.evaluate(PAGE_JS, ADDED)
        if current is not None and check(current):
            return current
        time.sleep(0.1)
    summary = dict(current or {})
    if ts := summary.pop("ts", None):
        summary["ts"] = (len(ts), ts[0], ts[-1])
    raise AssertionError(f"timed out waiting for {what}; last: {summary}")


def state_of(entry: str | None) -> str | None:
    found = entry and re.search(r"data-state='(\w+)'", entry)
    return found[1] if found else None


def test_add_a_symbol_see_it_backfill_and_go_live_get_an_alert_then_remove_it(
    writable_stack: WritableStack,
) -> None:
    api = httpx.Client(base_url=writable_stack.api_url, timeout=10)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.add_init_script(NOTIFICATIONS_JS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(writable_stack.dashboard_url)
            seen(
                page,
                lambda s: 'data-status="live"' in s["status"] and s["rows"] == CONFIGURED,
                "the configured stocks, live",
            )
            # configured symbols say why they cannot be removed here, and have no button
            page.get_by_text("set in STOCKSTREAMER_SYMBOLS").first.wait_for()
            assert page.get_by_role("button", name="Remove AAPL").count() == 0

            # -- a bad symbol: the API's reason, next to the input --------------------------
            box = page.get_by_placeholder("Symbol, e.g. AMD")
            box.fill("not a ticker!")
            page.get_by_role("button", name="Add", exact=True).click()
            refused = seen(page, lambda s: "not added" in (s["message"] or ""), "a refusal")
            assert "data-kind='error'" in refused["message"] and "(422)" in refused["message"]

            # -- add a symbol: pending, backfilling, live; its history, then live ticks -------
            page.evaluate(RECORD_JS, ADDED)
            added_at = time.time() * 1000
            box.fill(ADDED.lower())
            page.get_by_role("button", name="Add", exact=True).click()
            seen(page, lambda s: f"{ADDED} added" in (s["message"] or ""), "the add accepted")
            live = seen(
                page,
                lambda s: (
                    state_of(s["entry"]) == "live"
                    and bool(s["ts"])
                    and s["ts"][0] < added_at - 600_000  # its backfilled history (the last hour)
                    and s["ts"][-1] > added_at  # and live ticks
                ),
                f"{ADDED} live, with its history and new ticks",
                timeout=60,
            )
            assert "backfilling" in live["states"] and live["states"][-1] == "live", live["states"]
            assert ADDED in live["picked"] and ADDED in live["rows"]
            assert page.get_by_role("button", name=f"Remove {ADDED}").is_visible()

            # -- an alert whose line the price is certain to be above: it fires at once --------
            page.get_by_role("button", name="Allow browser notifications").click()
            seen(page, lambda s: s["notify_label"] == "Browser notifications on", "permission")
            created = api.post(
                "/api/v1/alerts",
                headers=auth,
                json={
                    "symbol": ADDED,
                    "condition": "above",
                    "value": 0.01,
                    "channels": ["browser"],
                    "note": "from the browser test",
                },
            )
            assert created.status_code == 201, created.text
            fired = seen(
                page,
                lambda s: f"{ADDED} above 0.01" in s["alerts"] and bool(s["notifications"]),
                "the alert on the page and as a notification",
            )
            (note,) = fired["notifications"]
            assert note["title"] == f"{ADDED} above 0.01"
            assert "from the browser test" in note["body"]
            assert note["tag"].startswith("stockstreamer-alert-")

            # -- remove it: gone from the page at once, and from the API ----------------------
            page.get_by_role("button", name=f"Remove {ADDED}").click()
            gone = seen(
                page,
                lambda s: s["entry"] is None and s["ts"] is None,
                f"{ADDED} off the page",
            )
            assert gone["drawn"] == [] and ADDED not in gone["picked"]
            assert ADDED not in gone["rows"] and f"{ADDED} removed" in gone["message"]
            listed = [s["symbol"] for s in api.get("/api/v1/stocks").json()]
            assert sorted(listed) == CONFIGURED
            assert errors == [], errors
        finally:
            browser.close()
            api.close()

"""The dashboard in a real browser, fed by the real stack (PostgreSQL, fetcher, API)."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from services.dashboard.shaping import DAY_MS, HOUR_MS, PALETTE
from services.runner.processes import ROOT
from tests.e2e.conftest import CHROMIUM, SYMBOLS, Stack

pytestmark = pytest.mark.browser

BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# What the page's Bokeh document holds right now, read through BokehJS's own models.
STATE_JS = """
(symbols) => {
  const doc = window.Bokeh && Bokeh.documents[0];
  if (!doc || !doc.get_model_by_name('status')) return null;
  const lines = {};
  for (const s of symbols) {
    const src = doc.get_model_by_name('source_' + s);
    lines[s] = src ? Array.from(src.data.ts) : null;
  }
  const chart = doc.get_model_by_name('chart');
  return {
    lines,
    status: doc.get_model_by_name('status').text,
    y: [chart.y_range.start, chart.y_range.end],
    follow: chart.x_range.follow_interval,
    yfield: JSON.stringify(doc.get_model_by_name('line_' + symbols[0]).glyph.y),
    now: Date.now(),
  };
}
"""

# Pixels of each line colour on the chart's canvases (Bokeh draws inside shadow roots).
PIXELS_JS = """
(colours) => {
  const canvases = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS') canvases.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  const counts = colours.map(() => 0);
  for (const c of canvases) {
    if (c.width < 300 || c.height < 200) continue;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) {
      colours.forEach(([r, g, b], k) => {
        if (d[i + 3] > 200 && Math.abs(d[i] - r) < 12 && Math.abs(d[i + 1] - g) < 12
            && Math.abs(d[i + 2] - b) < 12) counts[k]++;
      });
    }
  }
  return counts;
}
"""

# Page coordinates of one data point, through the plot view's own scales.
POINT_JS = """
([symbol, index]) => {
  const doc = Bokeh.documents[0];
  const view = Bokeh.index.find_one(doc.get_model_by_name('chart'));
  const data = doc.get_model_by_name('source_' + symbol).data;
  const box = view.canvas.el.getBoundingClientRect();
  return [box.left + view.frame.x_scale.compute(data.ts[index]),
          box.top + view.frame.y_scale.compute(data.price[index])];
}
"""

# Page coordinates of a legend entry (Bokeh lays legends out as DOM elements).
LEGEND_JS = """
(label) => {
  const legend = Bokeh.documents[0].get_model_by_name('legend');
  const entry = Bokeh.index.find_one(legend).entries.find((e) => e.label === label);
  const box = entry.el.getBoundingClientRect();
  return [box.left + box.width / 2, box.top + box.height / 2];
}
"""

LINE_COLOUR_JS = """
(s) => {
  const colour = Bokeh.documents[0].get_model_by_name('line_' + s).glyph.line_color;
  return typeof colour === 'string' ? colour : colour.value;
}
"""
VISIBLE_JS = "(name) => Bokeh.documents[0].get_model_by_name(name).visible"

State = dict[str, Any]


@pytest.fixture
def page(stack: Stack) -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(stack.dashboard_url)
            yield page
            assert errors == [], errors
        finally:
            browser.close()


def state(page: Page) -> State:
    result: State | None = page.evaluate(STATE_JS, SYMBOLS)
    assert result is not None, "no Bokeh document on the page"
    return result


def wait_for(page: Page, check: Callable[[State], bool], what: str, timeout: float = 15) -> State:
    deadline = time.monotonic() + timeout
    current: State | None = None
    while time.monotonic() < deadline:
        current = page.evaluate(STATE_JS, SYMBOLS)
        if current is not None and check(current):
            return current
        time.sleep(0.1)
    summary = current and {k: v for k, v in current.items() if k != "lines"}
    raise AssertionError(f"timed out waiting for {what}; last state: {summary}")


CANDLES_JS = """
() => {
  const data = Bokeh.documents[0].get_model_by_name('candle_source').data;
  const out = {};
  for (const k of ['ts', 'open', 'high', 'low', 'close']) out[k] = Array.from(data[k]);
  return out;
}
"""


def wait_for_candles(
    page: Page, check: Callable[[State], bool], what: str, timeout: float = 20
) -> State:
    deadline = time.monotonic() + timeout
    current: State = {}
    while time.monotonic() < deadline:
        current = page.evaluate(CANDLES_JS)
        if check(current):
            return current
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {len(current.get('ts', []))} bars")


def status_of(s: State) -> str:
    return str(s["status"]).split('data-status="', 1)[1].split('"', 1)[0]


def newest(s: State) -> int:
    return max(ts[-1] for ts in s["lines"].values())


def click(page: Page, label: str) -> None:
    page.get_by_role("button", name=label, exact=True).click()


def rgb(colour: str) -> list[int]:
    return [int(colour[i : i + 2], 16) for i in (1, 3, 5)]


def test_dashboard_in_a_browser(stack: Stack, page: Page, tmp_path: Path) -> None:
    # -- a line per stock, drawn ---------------------------------------------------------
    s = wait_for(
        page,
        lambda s: status_of(s) == "live" and all(ts and len(ts) > 2 for ts in s["lines"].values()),
        "a live line per stock",
    )
    assert s["follow"] == HOUR_MS
    page.wait_for_timeout(500)  # let the canvas paint the latest frame
    pixels = page.evaluate(PIXELS_JS, [rgb(PALETTE[i]) for i in range(len(SYMBOLS))])
    assert all(count > 1000 for count in pixels), dict(zip(SYMBOLS, pixels, strict=True))

    # -- it grows as ticks arrive, within a second of the fetcher's write -----------------
    before = {sym: (len(ts), ts[-1]) for sym, ts in s["lines"].items()}
    lags = []
    for _ in range(30):
        sample = state(page)
        lags.append(sample["now"] - newest(sample))
        page.wait_for_timeout(100)
    grown = state(page)
    for sym, (count, last) in before.items():
        assert len(grown["lines"][sym]) > count and grown["lines"][sym][-1] > last, sym
    print(f"tick-to-browser lag: median {statistics.median(lags):.0f} ms, max {max(lags):.0f} ms")
    assert statistics.median(lags) < 1000

    # -- the API goes away: the page says so and keeps working ----------------------------
    stopped_at = newest(state(page))
    stack.api.stop()
    down = wait_for(page, lambda s: status_of(s) == "unreachable", "the unreachable indicator")
    click(page, "% change")  # a round trip through the dashboard server still works
    wait_for(page, lambda s: "pct" in s["yfield"], "% mode while the API is down")
    click(page, "Price")
    assert all(len(ts) >= len(down["lines"][sym]) for sym, ts in state(page)["lines"].items())
    page.wait_for_timeout(1500)  # ticks keep being written meanwhile

    # -- it comes back by itself, filling the gap -----------------------------------------
    restarted_at = int(time.time() * 1000)
    stack.start_api()
    back = wait_for(
        page,
        # every line: Bokeh sends each source's update as its own message
        lambda s: (
            status_of(s) == "live"
            and all(ts[-1] > restarted_at + 500 for ts in s["lines"].values())
        ),
        "live again after the API restart",
        timeout=20,
    )
    for sym, ts in back["lines"].items():
        gap = [t for t in ts if stopped_at + 300 < t < restarted_at - 300]
        near = [t for t in ts if stopped_at - 3000 < t < restarted_at + 3000]
        assert gap, f"{sym}: nothing drawn between {stopped_at} and {restarted_at}: {near}"

    # -- switching the window and the mode changes what is drawn --------------------------
    hour = back
    click(page, "1 day")
    day = wait_for(
        page,
        lambda s: (
            s["follow"] == DAY_MS
            and max(ts[0] for ts in s["lines"].values()) < hour["now"] - 20 * HOUR_MS
        ),
        "a day of history",
    )
    for sym in SYMBOLS:
        assert day["lines"][sym][0] < hour["lines"][sym][0] - 10 * HOUR_MS, sym
    price_range = day["y"]
    click(page, "% change")
    assert price_range[1] > 30, price_range
    # change since the window's start: fractions around zero, not prices
    wait_for(page, lambda s: "pct" in s["yfield"] and -1 < s["y"][0] < 0 < s["y"][1] < 1, "% mode")
    click(page, "Price")
    wait_for(page, lambda s: "price" in s["yfield"] and s["y"][1] > 30, "price mode")

    # -- a legend click hides a stock, a second one shows it again ------------------------
    intc = [rgb(page.evaluate(f"() => ({LINE_COLOUR_JS})('INTC')"))]
    shown = page.evaluate(PIXELS_JS, intc)[0]
    page.mouse.click(*page.evaluate(LEGEND_JS, "INTC"))
    page.wait_for_function(f"() => !({VISIBLE_JS})('line_INTC')")
    page.wait_for_timeout(300)
    hidden = page.evaluate(PIXELS_JS, intc)[0]
    assert hidden < shown / 5, (shown, hidden)
    page.mouse.click(*page.evaluate(LEGEND_JS, "INTC"))
    page.wait_for_function(f"() => ({VISIBLE_JS})('line_INTC')")

    # -- hovering a point names the stock, its time, price and change ---------------------
    page.evaluate("() => document.activeElement?.blur()")  # no focus ring in the picture
    count = len(state(page)["lines"]["INTC"])
    page.mouse.move(*page.evaluate(POINT_JS, ["INTC", count // 2]))
    tooltip = page.get_by_text("since window start")
    tooltip.wait_for(state="visible", timeout=5000)
    text = page.evaluate(
        "() => { const walk = (root) => [...root.querySelectorAll('*')].flatMap((el) =>"
        " el.shadowRoot ? walk(el.shadowRoot) : [el]);"
        " return walk(document).filter((el) => el.classList.contains('bk-tooltip-content'))"
        ".map((el) => el.innerText).join(' | '); }"
    )
    assert "INTC" in text and "$" in text and "%" in text, text

    # -- a picture for the docs -----------------------------------------------------------
    page.wait_for_timeout(800)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")

    # -- a year of history, from the stored bars -------------------------------------------
    click(page, "1 year")
    year = wait_for(
        page,
        lambda s: (
            s["follow"] == 365 * DAY_MS
            and all(ts and ts[0] < s["now"] - 300 * DAY_MS for ts in s["lines"].values())
        ),
        "a year of history",
        timeout=30,
    )
    assert all(len(ts) <= 3600 for ts in year["lines"].values())  # the max_points set above

    # -- candlesticks of one stock, the last one kept live ---------------------------------
    click(page, "Candles")
    page.wait_for_function(f"() => ({VISIBLE_JS})('candles') && !({VISIBLE_JS})('chart')")
    candles = wait_for_candles(page, lambda c: len(c["ts"]) > 50, "a year of candles")
    assert candles["ts"] == sorted(candles["ts"])
    assert all(
        lo <= min(o, c) and max(o, c) <= hi
        for o, hi, lo, c in zip(
            candles["open"], candles["high"], candles["low"], candles["close"], strict=True
        )
    )
    click(page, "1 hour")
    hour_candles = wait_for_candles(
        page,
        lambda c: 0 < len(c["ts"]) and c["ts"][0] > time.time() * 1000 - 2 * HOUR_MS,
        "an hour of candles",
    )
    last = (len(hour_candles["ts"]), hour_candles["close"][-1], hour_candles["ts"][-1])
    wait_for_candles(
        page,
        lambda c: (len(c["ts"]), c["close"][-1], c["ts"][-1]) != last,
        "the last candle moving with live prices",
    )
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "candles.png"), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(tmp_path / "candles.png", ROOT / "docs" / "dashboard-candles.png")
    click(page, "Lines")
    page.wait_for_function(f"() => ({VISIBLE_JS})('chart') && !({VISIBLE_JS})('candles')")

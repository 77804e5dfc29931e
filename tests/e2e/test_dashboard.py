"""The dashboard in a real browser, fed by the real stack (PostgreSQL, fetcher, API)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from services.dashboard.shaping import DAY_MS, HOUR_MS, PALETTE
from services.dashboard.timeline import Timeline
from services.runner.processes import ROOT
from tests.e2e.conftest import CHROMIUM, SYMBOLS, Stack, VendorDashboard

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
  return [box.left + view.frame.x_scale.compute(data.x[index]),
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
# null until the model exists (the candle view is made when first shown)
VISIBLE_JS = """
(name) => {
  const doc = window.Bokeh && Bokeh.documents[0];
  const model = doc ? doc.get_model_by_name(name) : null;
  return model ? model.visible : null;
}
"""

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


def download(page: Page, into: Path) -> list[str]:
    """Click the page's "Download CSV" link; the file's lines."""
    with page.expect_download() as started:
        page.get_by_role("link", name="Download CSV").click()
    file = started.value
    assert file.suggested_filename.startswith("stockstreamer-")
    assert file.suggested_filename.endswith(".csv")
    saved = into / file.suggested_filename
    file.save_as(saved)
    return saved.read_text().splitlines()


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
    page.wait_for_function(f"() => ({VISIBLE_JS})('line_INTC') === false")
    page.wait_for_timeout(300)
    hidden = page.evaluate(PIXELS_JS, intc)[0]
    assert hidden < shown / 5, (shown, hidden)
    page.mouse.click(*page.evaluate(LEGEND_JS, "INTC"))
    page.wait_for_function(f"() => ({VISIBLE_JS})('line_INTC') === true")

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
    page.wait_for_function(
        f"() => ({VISIBLE_JS})('candles') === true && ({VISIBLE_JS})('chart') === false"
    )
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

    # -- what is on screen, as a CSV download: the candles' bars, then every line's ticks ---
    bars = download(page, tmp_path)
    assert bars[0] == "symbol,time,ts,open,high,low,close,ticks"
    assert len(bars) > 2 and len({line.split(",")[0] for line in bars[1:]}) == 1
    click(page, "Lines")
    page.wait_for_function(
        f"() => ({VISIBLE_JS})('chart') === true && ({VISIBLE_JS})('candles') === false"
    )
    ticks = download(page, tmp_path)
    assert ticks[0] == "symbol,time,ts,price,kind,source"
    rows = [line.split(",") for line in ticks[1:]]
    assert {r[0] for r in rows} == set(SYMBOLS)
    hour_ago = time.time() * 1000 - HOUR_MS - 60_000
    assert all(int(r[2]) >= hour_ago and r[4] in ("tick", "backfilled") for r in rows)
    for symbol in SYMBOLS:  # each stock's ticks in time order, up to the last seconds
        stamps = [int(r[2]) for r in rows if r[0] == symbol]
        assert stamps == sorted(stamps) and stamps[-1] > time.time() * 1000 - 30_000


# -- a closed exchange: banner, source badges, closed hours collapsed, the exchange's time ------
# The lines' axis as drawn: its range, the ticks and labels BokehJS computes, the points' x and ts.
AXIS_JS = """
() => {
  const doc = window.Bokeh && Bokeh.documents[0];
  const chart = doc && doc.get_model_by_name('chart');
  const axis = doc && doc.get_model_by_name('chart_xaxis');
  const src = doc && doc.get_model_by_name('source_AAPL');
  if (!chart || !axis || !src || !src.data.x || src.data.x.length == 0) return null;
  const r = chart.x_range;
  if (!Number.isFinite(r.start) || !Number.isFinite(r.end)) return null;
  const ticks = axis.ticker.get_ticks(r.start, r.end, r, 0).major;
  const banner = doc.get_model_by_name('market');
  return {
    start: r.start, end: r.end, ticks: Array.from(ticks),
    labels: axis.formatter.doFormat(Array.from(ticks), {loc: 0}),
    axis_label: axis.axis_label,
    x: Array.from(src.data.x), ts: Array.from(src.data.ts),
    banner: banner.visible ? banner.text : null,
  };
}
"""
NEW_YORK, AUCKLAND = ZoneInfo("America/New_York"), ZoneInfo("Pacific/Auckland")


def day_label(ts: float, zone: ZoneInfo) -> str:
    """A day tick's label as the page writes it: "Mon 30 Nov"."""
    return datetime.fromtimestamp(ts / 1000, zone).strftime("%a %-d %b")


def wait_for_axis(page: Page, check: Callable[[State], bool], what: str) -> State:
    deadline = time.monotonic() + 20
    current: State | None = None
    while time.monotonic() < deadline:
        current = page.evaluate(AXIS_JS)
        if current is not None and check(current):
            return current
        time.sleep(0.1)
    summary = current and {k: v for k, v in current.items() if k not in ("x", "ts")}
    raise AssertionError(f"timed out waiting for {what}; last: {summary}")


def test_a_closed_exchange_in_a_browser(vendor_dashboard: VendorDashboard, tmp_path: Path) -> None:
    api = vendor_dashboard.api
    window_start = time.time() * 1000 - 7 * DAY_MS
    open_ms = sum(max(0, b - max(a, window_start)) for a, b in api.sessions)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS
        )
        try:
            # a viewer far from New York: "local time" must differ from the exchange's
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, timezone_id="Pacific/Auckland"
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(vendor_dashboard.url)

            # -- the banner names the next open in New York time ----------------------------
            banner = page.get_by_text("Market closed — opens")
            banner.wait_for(state="visible", timeout=20_000)
            assert re.search(r"opens \w{3}( \d+ \w{3})? \d\d:\d\d ET", banner.inner_text())

            # -- each stock's source, a fallback marked as such ------------------------------
            page.get_by_text("finnhub · failover").wait_for(state="visible", timeout=10_000)
            assert page.get_by_text("alpaca", exact=True).is_visible()

            # -- a week of nights and a weekend closed is as wide as its open time -------------
            axis = wait_for_axis(
                page,
                lambda a: len(a["ts"]) > 100 and a["axis_label"].endswith("closed hours hidden"),
                "the week's lines with closed hours collapsed",
            )
            ts_gaps = [b - a for a, b in zip(axis["ts"], axis["ts"][1:], strict=False)]
            x_gaps = [b - a for a, b in zip(axis["x"], axis["x"][1:], strict=False)]
            assert max(ts_gaps) > 15 * HOUR_MS and max(x_gaps) <= 5 * 60_000  # nights: no width
            width = axis["end"] - axis["start"]
            assert 0.9 * open_ms <= width <= 1.1 * open_ms, (width, open_ms)
            # ticks at session opens, labelled with New York's trading days
            assert axis["axis_label"] == "Times: New York (ET) · closed hours hidden"
            assert len(axis["labels"]) >= 3, axis["labels"]
            assert not {label[:3] for label in axis["labels"]} & {"Sat", "Sun"}
            asked = api.session_requests[-1]  # the page's window, its sessions clipped to it
            lo, hi = int(asked["start"]), int(asked["end"])
            line = Timeline.collapsed([(max(a, lo), min(b, hi)) for a, b in api.sessions])
            opens = {line.x(a) for a, _ in api.sessions}
            assert set(axis["ticks"]) <= opens, axis["ticks"]
            assert axis["labels"] == [day_label(line.ts(x), NEW_YORK) for x in axis["ticks"]]
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "closed.png"), full_page=True)

            # -- the browser's own zone on request: Auckland is a day ahead of New York -------
            click(page, "Your local time")
            local = wait_for_axis(
                page, lambda a: a["axis_label"].startswith("Times: Your local time"), "local time"
            )
            assert local["labels"] == [day_label(line.ts(x), AUCKLAND) for x in local["ticks"]]
            assert local["labels"] != axis["labels"]

            # -- real time on request: the weekend is back ------------------------------------
            click(page, "Real time")
            # a tick each local midnight, named by its local day
            real = wait_for_axis(
                page,
                lambda a: (
                    a["x"] == a["ts"]
                    and a["end"] - a["start"] > 2.5 * DAY_MS  # even over Christmas
                    and len(a["ticks"]) >= 3
                    and a["labels"] == [day_label(t, AUCKLAND) for t in a["ticks"]]
                ),
                "the week in real time, a tick each local day",
            )
            assert real["axis_label"] == "Times: Your local time"
            assert {datetime.fromtimestamp(t / 1000, AUCKLAND).hour for t in real["ticks"]} == {0}
            click(page, "Trading hours")
            wait_for_axis(
                page,
                lambda a: a["x"] != a["ts"] and a["axis_label"].endswith("closed hours hidden"),
                "closed hours hidden again",
            )
            assert errors == [], errors
        finally:
            browser.close()


# -- a flood of page loads ----------------------------------------------------------------------
FLOOD_PAGES, FLOOD_SECONDS = 500, 10.0
FLOOD_SOURCE = "127.0.0.2"  # the flooding client; the browser comes from 127.0.0.1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def bare_get(port: int, answers: list[int | str]) -> None:
    """One `GET /` as a script would send it: a new connection, no browser, status line only."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(FLOOD_SOURCE, 0)), 30
        )
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 30)
        answers.append(int(line.split()[1]) if line else "closed")
        writer.close()
    except (TimeoutError, OSError) as exc:
        answers.append(type(exc).__name__)


async def flood(port: int, sent: threading.Event, answers: list[int | str]) -> None:
    """FLOOD_PAGES page loads evenly over FLOOD_SECONDS, each sent whether or not others ended."""
    loop = asyncio.get_running_loop()
    start, tasks = loop.time(), []
    for i in range(FLOOD_PAGES):
        tasks.append(asyncio.create_task(bare_get(port, answers)))
        await asyncio.sleep(max(0.0, start + (i + 1) * FLOOD_SECONDS / FLOOD_PAGES - loop.time()))
    sent.set()
    await asyncio.gather(*tasks)


def test_a_flood_of_page_loads_leaves_the_page_usable(stack: Stack) -> None:
    readyz = f"{stack.dashboard_url}readyz"
    stack.dashboard.wait_http(readyz)
    deadline = time.monotonic() + 20
    while httpx.get(readyz, timeout=5).json()["feed"] != "live":
        assert time.monotonic() < deadline, "the dashboard's feed never went live"
        time.sleep(0.1)
    pid = stack.dashboard.pid
    rss_before = rss_mb(pid)

    sent, answers = threading.Event(), list[int | str]()
    flooding = threading.Thread(
        target=lambda: asyncio.run(flood(stack.dashboard_port, sent, answers)), daemon=True
    )
    flooding.start()
    assert sent.wait(FLOOD_SECONDS + 30), "the flood could not even be sent"
    flood_end = time.monotonic()
    rss_flood = rss_mb(pid)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(stack.dashboard_url, timeout=10_000)
            left = 10 - (time.monotonic() - flood_end)
            wait_for(
                page,
                lambda s: (
                    status_of(s) == "live" and all(ts and len(ts) > 2 for ts in s["lines"].values())
                ),
                "the live page within 10 s of the flood's end",
                timeout=max(left, 0.1),
            )
            live_after = time.monotonic() - flood_end
        finally:
            browser.close()

    flooding.join(60)
    counts = Counter(answers)
    print(f"flood answers: {dict(counts)}; live page {live_after:.1f} s after the flood's end")
    assert len(answers) == FLOOD_PAGES and counts[429] > 0  # refused, each at once
    assert set(counts) <= {200, 429, 503}, counts  # every load answered, none timed out

    # the sessions the flood's pages made (none connected) expire, and their memory goes
    deadline = time.monotonic() + 45
    while (rss := rss_mb(pid)) > rss_before + 50:
        assert time.monotonic() < deadline, f"RSS {rss_before:.0f} → {rss:.0f} MB"
        time.sleep(1)
    print(f"dashboard RSS: {rss_before:.0f} MB before, {rss_flood:.0f} after the flood, {rss:.0f}")
    # the browser's session too, once it expires: it no longer takes a share of the feed
    while (
        "stockstreamer_dashboard_sessions 0.0"
        not in httpx.get(f"{stack.dashboard_url}metrics").text
    ):
        assert time.monotonic() < deadline + 30, "the closed page's session is still fed"
        time.sleep(0.5)

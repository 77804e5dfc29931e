"""Price history: columnar shape, windows, downsampling bounds, validation; the latest ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.utils.api import T0, Market, ThreadedApi

MS = 1000


def iso(value: datetime) -> str:
    return value.isoformat()


async def test_raw_series_in_the_window(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL", "NVDA")
    await market.ticks([("AAPL", T0 + timedelta(seconds=i), 100 + i) for i in range(5)])
    await market.ticks([("NVDA", T0, 50.5)])
    start, end = T0 + timedelta(seconds=1), T0 + timedelta(seconds=3)

    body = (
        await client.get(
            "/api/v1/prices", params={"symbols": "AAPL,NVDA", "start": iso(start), "end": iso(end)}
        )
    ).json()

    t0 = int(T0.timestamp() * MS)
    assert body["start"] == t0 + 1000 and body["end"] == t0 + 3000 and body["max_points"] == 1000
    aapl, nvda = body["series"]
    assert aapl == {
        "symbol": "AAPL",
        "ts": [t0 + 1000, t0 + 2000, t0 + 3000],
        "price": [101, 102, 103],
        "downsampled": False,
        "bucket_ms": None,
    }
    assert nvda["symbol"] == "NVDA" and nvda["ts"] == [] and nvda["price"] == []


async def test_defaults_are_all_symbols_over_the_last_week(
    client: httpx.AsyncClient, market: Market
) -> None:
    now = datetime.now(UTC)
    await market.stocks("GE", "INTC")
    await market.ticks([("GE", now - timedelta(days=8), 1), ("GE", now - timedelta(days=6), 2)])

    body = (await client.get("/api/v1/prices")).json()

    assert [s["symbol"] for s in body["series"]] == ["GE", "INTC"]
    assert body["series"][0]["price"] == [2]
    assert body["end"] - body["start"] == 7 * 24 * 3600 * MS
    assert abs(body["end"] - now.timestamp() * MS) < 60_000


async def test_downsampling_never_exceeds_max_points_and_keeps_the_newest(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AMZN")
    await market.series("AMZN", 1000)
    newest = T0 + timedelta(seconds=999)

    for max_points in (1, 2, 3, 7, 100, 999):
        params = {
            "symbols": "AMZN",
            "start": iso(T0 - timedelta(minutes=1)),
            "end": iso(newest + timedelta(minutes=1)),
            "max_points": max_points,
        }
        series = (await client.get("/api/v1/prices", params=params)).json()["series"][0]

        assert series["downsampled"] is True and series["bucket_ms"] > 0
        assert 0 < len(series["ts"]) <= max_points and len(series["ts"]) == len(series["price"])
        assert series["ts"] == sorted(series["ts"]) and len(set(series["ts"])) == len(series["ts"])
        assert series["ts"][-1] == int(newest.timestamp() * MS)
        assert series["price"][-1] == 100 + (999 % 50) / 10
        if max_points >= 3:  # the low and high of the window survive as spikes
            assert min(series["price"]) == 100 and max(series["price"]) == 104.9
        if max_points == 999:
            assert len(series["ts"]) > 500  # the budget is used, not just respected


async def test_exactly_max_points_is_not_downsampled(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AMZN")
    await market.series("AMZN", 50)
    params: dict[str, str | int] = {
        "start": iso(T0),
        "end": iso(T0 + timedelta(hours=1)),
        "max_points": 50,
    }
    series = (await client.get("/api/v1/prices", params=params)).json()["series"][0]
    assert series["downsampled"] is False and len(series["ts"]) == 50


async def test_times_accept_naive_utc_zones_and_epoch_ms(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    expected = int(T0.timestamp() * MS)
    for start in (
        "2026-01-05T15:00:00",
        "2026-01-05T10:00:00-05:00",
        "2026-01-05T15:00:00Z",
        str(expected),
    ):
        params = {"start": start, "end": "2026-01-05T16:00:00Z"}
        response = await client.get("/api/v1/prices", params=params)
        assert response.status_code == 200, start
        assert response.json()["start"] == expected


INVALID: list[tuple[dict[str, str], str]] = [
    (
        {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        "query parameter 'start'",
    ),
    (
        {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        "query parameter 'start'",
    ),
    (
        {"start": "2014-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        "query parameter 'start'",
    ),
    ({"start": "yesterday"}, "query parameter 'start'"),
    ({"end": "2026-13-01"}, "query parameter 'end'"),
    ({"end": "99999999999999999999999"}, "query parameter 'end'"),
    ({"end": "0001-01-01T00:00:00Z"}, "query parameter 'end'"),
    ({"max_points": "0"}, "query parameter 'max_points'"),
    ({"max_points": "10001"}, "query parameter 'max_points'"),
    ({"max_points": "many"}, "query parameter 'max_points'"),
    ({"symbols": "AAPL,a$b"}, "query parameter 'symbols'"),
    ({"symbols": ",".join(f"S{i}" for i in range(51))}, "query parameter 'symbols'"),
]


async def test_invalid_parameters_are_422_naming_them(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    for params, names in INVALID:
        for path in ("/api/v1/prices", "/api/v1/prices/latest"):
            if path.endswith("latest") and "symbols" not in params:
                continue
            response = await client.get(path, params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert response.json()["detail"].startswith(names), (params, response.text)


async def test_unknown_symbols_are_404(client: httpx.AsyncClient, market: Market) -> None:
    await market.stocks("AAPL")
    for path in ("/api/v1/prices", "/api/v1/prices/latest"):
        response = await client.get(path, params={"symbols": "AAPL,ZZZ,YYY"})
        assert response.status_code == 404
        assert response.json() == {"detail": "unknown symbol(s): ZZZ, YYY"}


async def test_latest_is_the_newest_tick_per_symbol(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL", "NVDA", "GE")
    await market.ticks([("AAPL", T0, 1), ("NVDA", T0, 2)])
    last = await market.ticks([("AAPL", T0 + timedelta(seconds=5), 3)])
    await market.history([("AAPL", T0 - timedelta(days=1), 9)])

    body = (await client.get("/api/v1/prices/latest")).json()
    only = (await client.get("/api/v1/prices/latest", params={"symbols": "nvda"})).json()

    assert body[0] == {
        "symbol": "AAPL",
        "ts": int((T0 + timedelta(seconds=5)).timestamp() * MS),
        "price": 3,
        "event_id": last,
    }
    assert [b["symbol"] for b in body] == ["AAPL", "NVDA"]
    assert [o["symbol"] for o in only] == ["NVDA"]


async def test_downsampled_points_are_real_ticks_and_a_spike_keeps_its_time(
    client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("NFLX")
    # hourly over 30 days: buckets several days wide; one spike up and one down mid-bucket
    ticks = {T0 + timedelta(hours=h): 100 + (h % 7) / 10 for h in range(720)}
    high_at, low_at = T0 + timedelta(days=4, hours=5), T0 + timedelta(days=17, hours=13)
    ticks[high_at], ticks[low_at] = 250.0, 20.0
    await market.ticks([("NFLX", ts, price) for ts, price in ticks.items()])
    stored = {int(ts.timestamp() * MS): price for ts, price in ticks.items()}
    params: dict[str, str | int] = {
        "start": iso(T0),
        "end": iso(T0 + timedelta(days=30)),
        "max_points": 30,
    }

    series = (await client.get("/api/v1/prices", params=params)).json()["series"][0]

    assert series["downsampled"] is True and series["bucket_ms"] > 2 * 24 * 3600 * MS
    points = dict(zip(series["ts"], series["price"], strict=True))
    assert all(stored[ts] == price for ts, price in points.items())
    assert points[int(high_at.timestamp() * MS)] == 250.0
    assert points[int(low_at.timestamp() * MS)] == 20.0
    assert series["ts"][-1] == int((T0 + timedelta(hours=719)).timestamp() * MS)


async def test_history_beyond_the_concurrency_bound_is_a_quick_503(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    api = ThreadedApi(database_url, api_history_concurrency=2).start()
    try:
        for _ in range(2):  # two long history reads in flight
            api.run(api.app.state.limits.history_slots.acquire())
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            busy = await client.get("/api/v1/prices")
            bars = await client.get("/api/v1/bars")
            latest = await client.get("/api/v1/prices/latest")  # not a history read
            api.app.state.limits.history_slots.release()
            free = await client.get("/api/v1/prices")
    finally:
        api.stop()
    for response in (busy, bars):
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "too many history requests" in response.json()["detail"]
    assert latest.status_code == 200 and free.status_code == 200
    assert api.metric("stockstreamer_api_history_refused_total") == 2


async def test_a_query_past_the_statement_timeout_is_a_503(
    database_url: str, market: Market
) -> None:
    await market.stocks("AAPL")
    await market.series("AAPL", 3000)
    api = ThreadedApi(database_url, api_statement_timeout=0.001).start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            params: dict[str, str | int] = {
                "start": iso(T0),
                "end": iso(T0 + timedelta(hours=1)),
                "max_points": 10,
            }
            response = await client.get("/api/v1/prices", params=params)
    finally:
        api.stop()
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "took too long" in response.json()["detail"]


async def test_a_window_around_the_epoch_is_answered_within_max_points(
    client: httpx.AsyncClient, market: Market
) -> None:
    """The epoch is a bucket boundary at every width: one bucket can never hold the window."""
    await market.stocks("AAPL")
    for max_points in (1, 2, 5):
        params: dict[str, str | int] = {"end": "1000", "start": "-1000", "max_points": max_points}
        response = await client.get("/api/v1/prices", params=params, timeout=5)
        assert response.status_code == 200, response.text
        assert all(len(s["ts"]) <= max_points for s in response.json()["series"])


# Times Python reads but that lie outside years 1 to 9999 once in UTC.
OUT_OF_RANGE: list[tuple[dict[str, str], str]] = [
    ({"end": "9999-12-31T10:00-14:00"}, "end"),  # and the default start a week before it
    ({"start": "9999-12-31T10:30-14:00", "end": "2026-01-05T00:00Z"}, "start"),
    ({"start": "9999-12-30T00:00Z", "end": "9999-12-31T10:00-14:00"}, "end"),
    ({"start": "0001-01-01T10:00+14:00", "end": "0001-01-02T00:00Z"}, "start"),
]


async def test_times_out_of_range_in_utc_are_422_naming_them(
    api: ThreadedApi, client: httpx.AsyncClient, market: Market
) -> None:
    await market.stocks("AAPL")
    for path in ("/api/v1/prices", "/api/v1/bars"):
        for params, name in OUT_OF_RANGE:
            response = await client.get(path, params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert response.json()["detail"].startswith(f"query parameter '{name}'"), params
            assert "out of range" in response.json()["detail"]
        # the edges of the range themselves are served
        edge = {"start": "9999-12-31T00:00Z", "end": "9999-12-31T23:59:59.999999Z"}
        assert (await client.get(path, params=edge)).status_code == 200, path
        edge = {"start": "0001-01-01T00:00Z", "end": "0001-01-02T00:00Z"}
        assert (await client.get(path, params=edge)).status_code == 200, path
    assert (
        api.metric(
            "stockstreamer_api_request_seconds_count",
            method="GET",
            route="/api/v1/prices",
            status="503",
        )
        == 0
    )

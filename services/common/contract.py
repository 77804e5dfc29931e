"""The HTTP contract: what the API sends and the dashboard reads (see docs/architecture.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, WithJsonSchema

# A pair, declared without `prefixItems`, which some OpenAPI tools do not read yet (schemathesis).
PAIR_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer"},
    "minItems": 2,
    "maxItems": 2,
}


class Problem(BaseModel):
    """An error: `detail` says what is wrong, naming the parameter."""

    detail: str = Field(examples=["query parameter 'max_points': must be at most 10000"])


class Stock(BaseModel):
    """A tracked stock with its metadata, last price and change."""

    symbol: str
    name: str | None
    logo_url: str | None
    week52_high: float | None
    week52_low: float | None
    previous_close: float | None
    metadata_updated_at: datetime | None
    last_price: float | None
    last_ts: datetime | None
    change: float | None = Field(
        description="last_price minus previous_close, else minus the day's first price (New York)."
    )
    change_pct: float | None = Field(description="change as a percentage of its reference.")
    source: str | None = Field(None, description="The provider of the last tick (e.g. alpaca).")
    failover: bool = Field(
        False, description="True when that provider is a fallback, not the first of the chain."
    )


class Logo(BaseModel):
    """A stock's logo resource."""

    symbol: str
    logo_url: str | None
    updated_at: datetime | None


class HighLow(BaseModel):
    """A stock's 52-week high and low."""

    symbol: str
    week52_high: float | None
    week52_low: float | None
    updated_at: datetime | None


class Series(BaseModel):
    """One symbol's history as parallel arrays, oldest first, the newest tick last."""

    symbol: str
    ts: list[int] = Field(description="Epoch milliseconds (UTC).")
    price: list[float]
    downsampled: bool
    bucket_ms: int | None = Field(description="Bucket width when downsampled (min/max/last each).")


class Window(BaseModel):
    """What every history answer starts with: the window it covers."""

    start: int = Field(description="Window start, epoch milliseconds (inclusive).")
    end: int = Field(description="Window end, epoch milliseconds (inclusive).")


class Prices(Window):
    """History of several symbols over one window."""

    max_points: int
    series: list[Series]


class BarSeries(BaseModel):
    """One symbol's bars as parallel arrays, oldest first."""

    symbol: str
    ts: list[int] = Field(description="Start of each bar, epoch milliseconds (UTC).")
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    ticks: list[int] = Field(description="Ticks summarised by each bar.")


class Bars(Window):
    """Open/high/low/close bars of several symbols over one window, at one interval."""

    interval: str = Field(description="The bar width served, e.g. 1m, 1h, 1d.")
    interval_ms: int
    series: list[BarSeries]


class LatestPrice(BaseModel):
    """The newest tick of a symbol."""

    symbol: str
    ts: int = Field(description="Epoch milliseconds (UTC).")
    price: float
    event_id: int


class Market(BaseModel):
    """The market's state by its exchange calendar; also the data of a `market` event."""

    calendar: str = Field(examples=["XNYS"], description="An exchange-calendars name, or 24/7.")
    timezone: str = Field(examples=["America/New_York"], description="The exchange's time zone.")
    is_open: bool
    next_open: datetime | None = Field(description="None when the market never closes.")
    next_close: datetime | None = Field(description="None when the market never closes.")
    extended_hours: bool = Field(description="Whether ticks outside the session are kept.")
    collapse_closed: bool = Field(
        description="Whether charts should hide closed hours by default (true for vendors)."
    )


class Sessions(Window):
    """The open intervals of the market in a window: what a chart collapsing closed hours keeps."""

    calendar: str
    timezone: str
    sessions: list[Annotated[tuple[int, int], WithJsonSchema(PAIR_SCHEMA)]] = Field(
        description="[open, close) pairs, epoch milliseconds, clipped to the window, oldest first."
    )


class Health(BaseModel):
    """Liveness or readiness."""

    status: str


# -- the data of the stream's events (a `stock` event carries a Stock) -------------------------


class PricePayload(BaseModel):
    """A `price` event: one live tick; the event's `id:` is its event id."""

    symbol: str
    ts: int = Field(description="Epoch milliseconds (UTC).")
    price: float


class HistoryPayload(BaseModel):
    """A `history` event: history of these symbols changed in [start, end]; reload it."""

    symbols: list[str]
    start: int = Field(description="Epoch milliseconds (UTC).")
    end: int = Field(description="Epoch milliseconds (UTC).")


class ResetPayload(BaseModel):
    """A `reset` event: the resume point cannot be replayed; reload history, continue live."""

    reason: str
    last_event_id: int = Field(description="Where the stream continues from.")

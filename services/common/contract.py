"""The HTTP contract: what the API sends and the dashboard reads (see docs/architecture.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, WithJsonSchema, field_validator

from services.common.symbols import MAX_SYMBOL_LENGTH, SYMBOL_INPUT_PATTERN

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


StockState = Literal["pending", "backfilling", "live", "rejected", "removed"]


class Stock(BaseModel):
    """A stock of the watchlist with its state, metadata, last price and change."""

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
    state: StockState = Field(
        "live",
        description="pending (added, not yet taken up by the fetcher), backfilling (its history "
        "is being loaded: see progress), live, rejected (see reason), or removed (only in a "
        "`stock` event, with every other field null).",
    )
    progress: float | None = Field(None, description="backfilling: the share done, 0 to 1.")
    reason: str | None = Field(None, description="rejected: why, in the vendor's words.")
    origin: Literal["config", "api"] | None = Field(
        None, description="config: from STOCKSTREAMER_SYMBOLS (not removable here); api: added."
    )


class NewStock(BaseModel):
    """A symbol to add to the watchlist."""

    symbol: str = Field(
        min_length=1,
        max_length=MAX_SYMBOL_LENGTH,
        pattern=SYMBOL_INPUT_PATTERN,
        description="A ticker such as AMD or BRK.B (case-insensitive).",
        examples=["AMD"],
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


# -- alerts ------------------------------------------------------------------------------------

ALERT_VALUE_LIMIT = 1e9  # the database's bound on a value, either sign
CHANNEL_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
Condition = Literal["above", "below", "change_pct"]
Channel = Annotated[str, Field(min_length=1, max_length=32, pattern=CHANNEL_PATTERN)]


class NewAlert(BaseModel):
    """An alert to create: a price line (above, below) or a move in percent (change_pct)."""

    symbol: str = Field(
        min_length=1,
        max_length=MAX_SYMBOL_LENGTH,
        pattern=SYMBOL_INPUT_PATTERN,
        description="A ticker of the watchlist's pattern (case-insensitive).",
        examples=["AAPL"],
    )
    condition: Condition = Field(
        description="above/below: the price passes `value`; change_pct: the move against the "
        "previous close reaches `value` percent."
    )
    value: float = Field(
        ge=-ALERT_VALUE_LIMIT,
        le=ALERT_VALUE_LIMIT,
        allow_inf_nan=False,
        description="A price (above, below: more than 0), or a percentage (change_pct).",
        examples=[200.5],
    )
    channels: list[Channel] = Field(
        default_factory=lambda: ["browser"],
        min_length=1,
        max_length=10,
        description="Where a firing is delivered: `browser` (the stream's `alert` events) or a "
        "channel the alerts service was configured with.",
        examples=[["browser"]],
    )
    note: str | None = Field(
        None, max_length=500, description="Sent with every delivery.", examples=["take profit"]
    )

    @field_validator("value")
    @classmethod
    def _a_price_is_positive(cls, value: float, info: ValidationInfo) -> float:
        # condition is declared first, so it is validated (or missing) by now
        if info.data.get("condition") in ("above", "below") and value <= 0:
            raise ValueError("a price line (above, below) must be more than 0")
        return value


class Alert(BaseModel):
    """An alert in force."""

    id: int
    symbol: str
    condition: Condition
    value: float
    channels: list[str]
    note: str | None
    armed: bool = Field(description="False from a firing until the price comes back past the line.")
    fired: int = Field(description="Firings so far.")
    created_at: datetime


class FiredEvent(BaseModel):
    """An alert fired."""

    type: Literal["fired"] = "fired"
    firing_id: int = Field(description="The firing's stable id, sent with every delivery.")
    at: datetime
    price: float = Field(description="The price that fired it.")
    line: float = Field(description="The price the alert watched when it fired.")
    tick_ts: datetime = Field(description="The time of the tick that fired it.")


class DeliveryEvent(BaseModel):
    """One attempt to deliver a firing to one channel."""

    type: Literal["delivery"] = "delivery"
    firing_id: int
    at: datetime
    channel: str
    attempt: int
    result: Literal["delivered", "failed", "abandoned"]
    detail: str | None


class AlertEvents(BaseModel):
    """Every firing of an alert and every delivery attempt, oldest first."""

    alert_id: int
    events: list[Annotated[FiredEvent | DeliveryEvent, Field(discriminator="type")]]


class AlertFiring(BaseModel):
    """An `alert` event: an alert fired (sent to every stream, whatever its symbols)."""

    firing_id: int = Field(description="Stable: receivers may deduplicate on it.")
    alert_id: int
    symbol: str
    condition: Condition
    value: float
    price: float
    line: float
    ts: int = Field(description="The tick's time, epoch milliseconds (UTC).")
    note: str | None
    channels: list[str]

"""The bar levels stored beside raw ticks (the `bars` table), shared by the writer and the API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Keep(StrEnum):
    """How long a level's rows are kept."""

    RAW = "raw"  # as long as raw ticks (STOCKSTREAMER_RETENTION)
    MINUTE = "minute"  # STOCKSTREAMER_RETENTION_MINUTE
    FOREVER = "forever"


@dataclass(frozen=True, slots=True)
class Level:
    """Bars `seconds` wide, aligned to the Unix epoch (a day bar is a UTC day)."""

    name: str
    seconds: int
    keep: Keep

    @property
    def table(self) -> str:
        """The partition of `bars` that holds this level."""
        return f"bars_{self.name}"


# Neighbouring widths differ by 2x to 6x (the common windows, an hour to a month, land on steps
# of 2x or 3x), so the level picked for a window returns a small multiple of the bars it needs.
LEVELS: tuple[Level, ...] = (
    Level("10s", 10, Keep.RAW),
    Level("1m", 60, Keep.MINUTE),
    Level("2m", 120, Keep.MINUTE),
    Level("5m", 300, Keep.MINUTE),
    Level("15m", 900, Keep.MINUTE),
    Level("30m", 1800, Keep.MINUTE),
    Level("1h", 3600, Keep.FOREVER),
    Level("4h", 14_400, Keep.FOREVER),
    Level("1d", 86_400, Keep.FOREVER),
)
BY_NAME = {level.name: level for level in LEVELS}
FINEST = LEVELS[0]
MINUTE = BY_NAME["1m"]

# Tables partitioned by time (see db/migrations): raw ticks and 10 s bars by day, the minute
# levels by month. The writer creates partitions before it writes into them.
DAILY = ("ticks", FINEST.table)
MONTHLY = tuple(level.table for level in LEVELS if level.keep is Keep.MINUTE)

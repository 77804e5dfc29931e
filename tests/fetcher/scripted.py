"""Stand-ins for external market-data vendors: scripted answers, or the simulator with a record."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from services.common.models import Profile, Tick, Week52
from services.fetcher.providers.base import Provider, ProviderError
from services.fetcher.providers.simulated import SimulatedProvider


class ScriptedProvider(Provider):
    """Answers `quotes()` from a script of tick lists or errors; then nothing new."""

    name = "scripted"

    def __init__(self, script: Sequence[list[Tick] | ProviderError] = ()) -> None:
        self.script: deque[list[Tick] | ProviderError] = deque(script)
        self.calls = 0
        self.profile_list: list[Profile] = []
        self.week52_list: list[Week52] = []

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        self.calls += 1
        if not self.script:
            return []
        step = self.script.popleft()
        if isinstance(step, ProviderError):
            raise step
        return step

    async def profiles(self, symbols: Sequence[str]) -> list[Profile]:
        return self.profile_list

    async def week52(self, symbols: Sequence[str]) -> list[Week52]:
        return self.week52_list


class RecordingProvider(SimulatedProvider):
    """The simulated market, remembering every tick it produced."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.produced: list[Tick] = []

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        ticks = await super().quotes(symbols)
        self.produced.extend(ticks)
        return ticks

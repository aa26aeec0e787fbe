"""A clock that moves only when a test moves it."""

from __future__ import annotations

import asyncio


class ManualClock:
    """A :class:`~greenferry.core.clock.Clock` for tests: ``advance`` moves time and wakes sleepers."""

    def __init__(self, start_s: float = 1_700_000_000.0) -> None:
        self._now_s = start_s
        self._start_s = start_s
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now_s(self) -> float:
        """Current virtual UTC time (POSIX seconds)."""
        return self._now_s

    def monotonic_s(self) -> float:
        """Virtual seconds since the clock was made."""
        return self._now_s - self._start_s

    async def sleep(self, duration_s: float) -> None:
        """Wait until :meth:`advance` has moved the clock past ``duration_s`` from now."""
        if duration_s <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now_s + duration_s, future))
        await future

    def advance(self, duration_s: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if duration_s < 0:
            raise ValueError("a clock does not go backwards")
        self._now_s += duration_s
        due = [(t, f) for t, f in self._sleepers if t <= self._now_s]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._now_s]
        for _, future in due:
            if not future.done():
                future.set_result(None)

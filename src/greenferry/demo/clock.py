"""An accelerated clock for the demo: simulated time runs ``speedup`` times faster than real time.

Both ``now_s`` and ``monotonic_s`` are scaled, and so is :meth:`ScaledClock.sleep`, so everything a daemon
paces or ages (signal max ages, power intervals, status refreshes, backoff) runs in simulated time. One
simulated day at ``speedup=720`` takes two real minutes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from greenferry.errors import ConfigError

__all__ = ["ScaledClock"]


class ScaledClock:
    """A :class:`~greenferry.core.clock.Clock` whose time runs ``speedup`` times real time from ``start_s``.

    Simulated time is ``start_s + speedup * (real elapsed seconds)``; ``monotonic_s`` is the simulated
    seconds since the clock was made; ``sleep(d)`` waits ``d / speedup`` real seconds (and never returns
    before the simulated deadline).

    Args:
        speedup: simulated seconds per real second (> 0; 1 is real time).
        start_s: simulated UTC time at creation (POSIX s).
        real_monotonic_s: the real clock (default :func:`time.monotonic`, the event loop's clock).
        real_sleep: the real sleep (default :func:`asyncio.sleep`); tests inject fakes of both.

    Raises:
        ConfigError: ``speedup`` is not a positive finite number, or ``start_s`` is not finite.
    """

    def __init__(
        self,
        speedup: float,
        start_s: float,
        *,
        real_monotonic_s: Callable[[], float] = time.monotonic,
        real_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if isinstance(speedup, bool) or not (math.isfinite(speedup) and speedup > 0):
            raise ConfigError(f"clock speedup must be a positive finite number, got {speedup!r}")
        if not math.isfinite(start_s):
            raise ConfigError(f"clock start_s must be a finite POSIX time, got {start_s!r}")
        self._speedup = float(speedup)
        self._start_s = float(start_s)
        self._real_monotonic_s = real_monotonic_s
        self._real_sleep = real_sleep
        self._real_origin_s = real_monotonic_s()

    @property
    def speedup(self) -> float:
        """Simulated seconds per real second."""
        return self._speedup

    @property
    def start_s(self) -> float:
        """Simulated UTC time when the clock was made (POSIX s)."""
        return self._start_s

    def elapsed_s(self) -> float:
        """Simulated seconds since the clock was made."""
        return self._speedup * (self._real_monotonic_s() - self._real_origin_s)

    def now_s(self) -> float:
        """Current simulated UTC time (POSIX s)."""
        return self._start_s + self.elapsed_s()

    def monotonic_s(self) -> float:
        """Simulated seconds since the clock was made (never goes backwards)."""
        return self.elapsed_s()

    def real_s(self, simulated_s: float) -> float:
        """How many real seconds ``simulated_s`` simulated seconds take."""
        return simulated_s / self._speedup

    async def sleep(self, duration_s: float) -> None:
        """Wait ``duration_s`` simulated seconds (``duration_s / speedup`` real seconds).

        Re-sleeps the remainder if the real sleep woke early (the event loop may fire a timer up to its
        clock resolution before the deadline), so the simulated deadline has passed on return, up to
        what the real clock can resolve (a remainder the real clock does not advance over ends the wait).
        """
        if not duration_s > 0:  # also NaN
            await self._real_sleep(0.0)
            return
        deadline_s = self.monotonic_s() + duration_s
        remaining_s = duration_s
        while remaining_s > 0:
            real_before_s = self._real_monotonic_s()
            await self._real_sleep(remaining_s / self._speedup)
            if self._real_monotonic_s() <= real_before_s:
                return  # a remainder below the real clock's resolution (float rounding): it cannot pass
            remaining_s = deadline_s - self.monotonic_s()

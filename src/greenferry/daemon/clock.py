"""The daemon's real clock (wall time for timestamps, the event loop's monotonic time for ages)."""

from __future__ import annotations

import asyncio
import time


class RealClock:
    """Wall-clock time; :meth:`sleep` is :func:`asyncio.sleep`."""

    def now_s(self) -> float:
        """Current UTC time as POSIX seconds."""
        return time.time()

    def monotonic_s(self) -> float:
        """Monotonic seconds (for ages and timeouts)."""
        return time.monotonic()

    async def sleep(self, duration_s: float) -> None:
        """Sleep ``duration_s`` seconds without blocking the event loop."""
        await asyncio.sleep(max(0.0, duration_s))

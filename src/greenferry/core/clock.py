"""Time as a dependency: the daemon reads a real clock, the simulator and tests a virtual one.

core/ never reads the wall clock; code that needs "now" takes a :class:`Clock` (or just ``now_s``).
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """A source of time. ``now_s`` is UTC epoch seconds; ``monotonic_s`` never goes backwards."""

    def now_s(self) -> float:
        """Current UTC time as POSIX seconds."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never jumps (for ages, timeouts and rates)."""
        ...

    async def sleep(self, duration_s: float) -> None:
        """Wait ``duration_s`` seconds of this clock's time."""
        ...

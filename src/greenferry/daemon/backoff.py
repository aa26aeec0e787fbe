"""The one jittered exponential backoff every outbound connection uses (MQTT, InfluxDB, peers)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Full-jitter exponential backoff: delay k is uniform in [min_s, min(max_s, min_s * factor**k)].

    Call :meth:`next_delay_s` after each failure and :meth:`reset` after a success.
    """

    min_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError("backoff needs 0 < min_s <= max_s")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")

    def next_delay_s(self) -> float:
        """The delay before the next attempt (s); grows with each call until :meth:`reset`."""
        ceiling = min(self.max_s, self.min_s * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng.uniform(self.min_s, ceiling)

    def reset(self) -> None:
        """Back to the shortest delay (after a successful connection)."""
        self.attempt = 0

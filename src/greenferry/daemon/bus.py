"""The node's event bus: publishers never block; each subscriber has a bounded queue and an overflow policy.

Sinks that must not lose data (telemetry) choose ``Overflow.BLOCK_NEVER_DROP`` semantics by sizing their
queue and spooling themselves; sinks that only care about the latest state (status) drop the oldest.
Every drop is counted per subscriber, so /metrics shows it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from enum import Enum
from typing import Generic, TypeVar

from greenferry.core.events import Event

logger = logging.getLogger(__name__)

E = TypeVar("E")


class Overflow(Enum):
    """What a full subscriber queue does with a new event."""

    DROP_OLDEST = "drop_oldest"  # keep the newest events (state-like consumers)
    DROP_NEWEST = "drop_newest"  # keep what is queued, refuse the new event


class Subscription(Generic[E]):
    """One subscriber's bounded queue. Iterate it (``async for``) to receive events."""

    def __init__(self, name: str, maxsize: int, overflow: Overflow) -> None:
        if maxsize < 1:
            raise ValueError("a subscription needs room for at least one event")
        self.name = name
        self.overflow = overflow
        self.dropped = 0
        self._queue: asyncio.Queue[E] = asyncio.Queue(maxsize)

    def offer(self, event: E) -> bool:
        """Queue ``event`` without blocking; False when it (or an older one) was dropped."""
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            if self.overflow is Overflow.DROP_NEWEST:
                return False
            self._queue.get_nowait()
            self._queue.put_nowait(event)
            return False

    async def get(self) -> E:
        """The next event, waiting for one."""
        return await self._queue.get()

    def get_nowait(self) -> E:
        """The next event; raises asyncio.QueueEmpty when none is queued."""
        return self._queue.get_nowait()

    def qsize(self) -> int:
        """Events waiting."""
        return self._queue.qsize()

    async def __aiter__(self) -> AsyncIterator[E]:
        while True:
            yield await self._queue.get()


class EventBus:
    """Fan-out of node events to subscribers. ``publish`` is synchronous and never blocks."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription[Event]] = []
        self.published = 0

    def subscribe(
        self, name: str, maxsize: int = 10_000, overflow: Overflow = Overflow.DROP_OLDEST
    ) -> Subscription[Event]:
        """Add a subscriber with its own bounded queue."""
        subscription: Subscription[Event] = Subscription(name, maxsize, overflow)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[Event]) -> None:
        """Stop delivering to ``subscription``."""
        self._subscriptions.remove(subscription)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber's queue."""
        self.published += 1
        for subscription in self._subscriptions:
            if not subscription.offer(event) and subscription.dropped in (1, 10, 100, 1000, 10_000):
                logger.warning(
                    "subscriber %s is behind: %d events dropped (%s)",
                    subscription.name,
                    subscription.dropped,
                    subscription.overflow.value,
                )

    @property
    def subscriptions(self) -> tuple[Subscription[Event], ...]:
        """Current subscribers (for metrics)."""
        return tuple(self._subscriptions)

"""Grid and renewable signals as the node sees them, with their age: pure data, no I/O, no clock.

The MQTT adapter turns payloads into :class:`Reading`; the :class:`SignalBoard` keeps the latest reading
per kind and answers "what do we know now" for the policies, treating a reading older than its maximum age
as unknown: a stale production signal means no surplus is assumed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class SignalKind(Enum):
    """The signals a node subscribes to. Values are SI (W, gCO2/kWh, currency per MWh)."""

    PRODUCTION_W = "production"  # renewable production at the site (W)
    LOAD_W = "load"  # site load other than greenferry's jobs (W)
    SURPLUS_FORECAST = "surplus_forecast"  # forecast windows: tuple[SurplusWindow, ...]
    CARBON_G_PER_KWH = "carbon"  # grid carbon intensity (gCO2/kWh)
    PRICE_PER_MWH = "price"  # electricity price (currency units per MWh)
    DEMAND_RESPONSE = "demand_response"  # a DR event (DemandResponseEvent from core.dr)


@dataclass(frozen=True, slots=True)
class SurplusWindow:
    """A forecast span of surplus power at the site, [start_s, end_s) in UTC POSIX seconds."""

    start_s: float
    end_s: float
    power_w: float


@dataclass(frozen=True, slots=True)
class Reading:
    """One accepted signal value. ``received_s`` is when the node got it (monotonic seconds)."""

    kind: SignalKind
    value: Any
    received_s: float
    topic: str = ""
    source_time_s: float | None = None  # the payload's own timestamp (UTC POSIX s), when it has one


class SignalBoard:
    """Latest reading per signal kind, with per-kind maximum ages (seconds)."""

    def __init__(self, max_age_s: Mapping[SignalKind, float]) -> None:
        self._max_age_s = dict(max_age_s)
        self._latest: dict[SignalKind, Reading] = {}

    def update(self, reading: Reading) -> None:
        """Store ``reading`` as the latest of its kind."""
        self._latest[reading.kind] = reading

    def latest(self, kind: SignalKind) -> Reading | None:
        """The latest reading of ``kind`` however old, or None if none arrived."""
        return self._latest.get(kind)

    def age_s(self, kind: SignalKind, now_s: float) -> float:
        """Seconds since the latest reading of ``kind`` (inf if none)."""
        reading = self._latest.get(kind)
        return math.inf if reading is None else max(0.0, now_s - reading.received_s)

    def is_stale(self, kind: SignalKind, now_s: float) -> bool:
        """True when ``kind`` has no reading younger than its maximum age."""
        return self.age_s(kind, now_s) > self._max_age_s.get(kind, math.inf)

    def fresh(self, kind: SignalKind, now_s: float) -> Reading | None:
        """The latest reading of ``kind`` if it is not stale, else None."""
        return None if self.is_stale(kind, now_s) else self._latest.get(kind)

    def surplus_w(self, now_s: float) -> float:
        """Renewable surplus now: production minus other site load, never negative.

        Safe when signals are missing: no fresh production means no surplus; no load signal configured
        (no maximum age for it) means zero load, but a configured load signal that went stale means the
        load is unknown and no surplus is assumed either.
        """
        production = self.fresh(SignalKind.PRODUCTION_W, now_s)
        if production is None:
            return 0.0
        load_w = 0.0
        if SignalKind.LOAD_W in self._max_age_s:
            load = self.fresh(SignalKind.LOAD_W, now_s)
            if load is None:
                return 0.0
            load_w = float(load.value)
        return max(0.0, float(production.value) - load_w)

    def snapshot(self, now_s: float) -> dict[str, dict[str, Any]]:
        """JSON-ready state of every configured signal: value, age, stale."""
        out: dict[str, dict[str, Any]] = {}
        for kind in self._max_age_s:
            reading = self._latest.get(kind)
            age = self.age_s(kind, now_s)
            out[kind.value] = {
                "value": _jsonable(reading.value) if reading is not None else None,
                "age_s": None if math.isinf(age) else age,
                "stale": self.is_stale(kind, now_s),
                "topic": reading.topic if reading is not None else None,
            }
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(w, SurplusWindow) for w in value):
        return [{"start_s": w.start_s, "end_s": w.end_s, "power_w": w.power_w} for w in value]
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    return value

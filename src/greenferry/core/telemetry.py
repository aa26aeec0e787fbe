"""A telemetry point: what every sink (InfluxDB, SQLite) stores. Pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

FieldValue = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Point:
    """One row of one measurement at ``time_ns`` (UTC nanoseconds since the epoch)."""

    measurement: str
    fields: Mapping[str, FieldValue]
    time_ns: int
    tags: Mapping[str, str] = field(default_factory=dict)

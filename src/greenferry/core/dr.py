"""Demand-response events modelled on OpenADR 3: a pure parser, the event model, and a book of live events.

An OpenADR 3 event (``objectType: EVENT``) has an ``intervalPeriod`` (start, duration) and a list of
``intervals``, each carrying ``payloads`` (``{"type": "PRICE", "values": [0.17]}``). An interval without its
own period starts where the previous one ended (the first at the event's start) and lasts the event's
duration. OpenADR 3.1 wraps objects in notifications (``{"objectType", "operation", "object"}``); a
``DELETE`` notification cancels the event. OpenADR 3.0 has no modification number: events are versioned by
``modificationDateTime``; greenferry also reads an optional integer ``modificationNumber`` (as in
OpenADR 2.0b) and an optional ``cancelled: true``.

Everything here is pure: no I/O, no clock. Errors are :class:`~greenferry.errors.PayloadError` with a stable
``reason`` (``bad_schema``, ``missing_field``, ``unknown_dr_payload``, ``bad_dr_value``, ``bad_time``,
``bad_duration``, ``interval_order``, ``not_finite``, ``negative_power``, ``negative_carbon``,
``too_many_intervals``, ``too_many_values``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenferry.errors import PayloadError

__all__ = [
    "KNOWN_PAYLOAD_TYPES",
    "MAX_INTERVALS",
    "MAX_VALUES",
    "DemandResponseEvent",
    "DrEventBook",
    "DrInterval",
    "DrPayload",
    "DrValue",
    "parse_datetime_s",
    "parse_dr_event",
    "parse_duration_s",
]

MAX_INTERVALS = 1000
MAX_VALUES = 1000
MAX_TEXT_CHARS = 1000  # alert texts, names and ids longer than this are refused
_MAX_ID_CHARS = 256

# OpenADR 3.0 event payload types (spec section "Enumerations"), by the kind of value they carry.
_LEVEL_TYPES = frozenset({"SIMPLE"})  # integer 0..3
_SIGNED_TYPES = frozenset(
    {
        "PRICE",
        "EXPORT_PRICE",
        "CONTROL_SETPOINT",
        "DISPATCH_SETPOINT_RELATIVE",
        "IMPORT_CAPACITY_RESERVATION_FEE",
        "IMPORT_CAPACITY_AVAILABLE_PRICE",
        "EXPORT_CAPACITY_RESERVATION_FEE",
        "EXPORT_CAPACITY_AVAILABLE_PRICE",
    }
)
_POWER_TYPES = frozenset(  # non-negative; converted to W when the payload descriptor gives W, KW or MW
    {
        "DISPATCH_SETPOINT",
        "IMPORT_CAPACITY_SUBSCRIPTION",
        "IMPORT_CAPACITY_RESERVATION",
        "IMPORT_CAPACITY_AVAILABLE",
        "IMPORT_CAPACITY_LIMIT",
        "EXPORT_CAPACITY_SUBSCRIPTION",
        "EXPORT_CAPACITY_RESERVATION",
        "EXPORT_CAPACITY_AVAILABLE",
        "EXPORT_CAPACITY_LIMIT",
    }
)
# Signed power: a change from the current load (negative: consume less).
_SIGNED_POWER_TYPES = frozenset({"DISPATCH_SETPOINT_RELATIVE"})
_CONVERTED_TYPES = _POWER_TYPES | _SIGNED_POWER_TYPES  # converted to W when units say W, KW or MW
_NON_NEGATIVE_TYPES = frozenset({"CHARGE_STATE_SETPOINT"})
_CARBON_TYPES = frozenset({"GHG"})  # g/kWh
_FRACTION_TYPES = frozenset({"OLS"})  # 0..1
_CURVE_TYPES = frozenset({"CURVE"})  # points {"x", "y"}
_BINARY_TYPES = frozenset({"CTA2045_REBOOT", "CTA2045_SET_OVERRIDE_STATUS"})  # 0 or 1
_ALERT_TYPES = frozenset(
    {
        "ALERT_GRID_EMERGENCY",
        "ALERT_BLACK_START",
        "ALERT_POSSIBLE_OUTAGE",
        "ALERT_FLEX_ALERT",
        "ALERT_FIRE",
        "ALERT_FREEZING",
        "ALERT_WIND",
        "ALERT_TSUNAMI",
        "ALERT_AIR_QUALITY",
        "ALERT_OTHER",
    }
)
KNOWN_PAYLOAD_TYPES: frozenset[str] = (
    _LEVEL_TYPES
    | _SIGNED_TYPES
    | _POWER_TYPES
    | _NON_NEGATIVE_TYPES
    | _CARBON_TYPES
    | _FRACTION_TYPES
    | _CURVE_TYPES
    | _BINARY_TYPES
    | _ALERT_TYPES
)
_POWER_UNITS_W = {"W": 1.0, "KW": 1e3, "MW": 1e6}

# A value in a payload: a number, an alert text, or a curve point (x, y).
DrValue = float | str | tuple[float, float]

_DURATION_RE = re.compile(
    r"(-)?P(?:(\d{1,4})Y)?(?:(\d{1,4})M)?(?:(\d{1,6})W)?(?:(\d{1,7})D)?"
    r"(?:T(?:(\d{1,9}(?:\.\d{1,9})?)H)?(?:(\d{1,9}(?:\.\d{1,9})?)M)?(?:(\d{1,12}(?:\.\d{1,9})?)S)?)?"
)
_INFINITE_DURATION = "P9999Y"  # OpenADR 3: "an indefinite duration"
_MAX_TIME_S = 253402300799.0  # 9999-12-31T23:59:59Z


@dataclass(frozen=True, slots=True)
class DrPayload:
    """One payload of an interval: its OpenADR type, its values, and their units (W for power types)."""

    type: str
    values: tuple[DrValue, ...]
    units: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (curve points as ``{"x", "y"}``)."""
        values = [{"x": v[0], "y": v[1]} if isinstance(v, tuple) else v for v in self.values]
        out: dict[str, Any] = {"type": self.type, "values": values}
        if self.units is not None:
            out["units"] = self.units
        return out


@dataclass(frozen=True, slots=True)
class DrInterval:
    """A span [start_s, start_s + duration_s) in UTC POSIX seconds; ``duration_s`` may be inf."""

    start_s: float
    duration_s: float
    payloads: tuple[DrPayload, ...]
    id: int | None = None

    @property
    def end_s(self) -> float:
        """End of the interval (UTC POSIX s, exclusive; inf when open-ended)."""
        return self.start_s + self.duration_s

    def contains(self, now_s: float) -> bool:
        """True when ``now_s`` lies in the interval."""
        return self.start_s <= now_s < self.end_s

    def payload(self, payload_type: str) -> DrPayload | None:
        """The payload of ``payload_type`` in this interval, if any."""
        for item in self.payloads:
            if item.type == payload_type:
                return item
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``duration_s`` null when open-ended)."""
        return {
            "id": self.id,
            "start_s": self.start_s,
            "duration_s": None if math.isinf(self.duration_s) else self.duration_s,
            "payloads": [p.to_json() for p in self.payloads],
        }


@dataclass(frozen=True, slots=True)
class DemandResponseEvent:
    """A demand-response event: what the grid asks for, over which intervals.

    ``priority``: lower is more important (OpenADR); None when not given. ``modified_s``: the event's
    ``modificationDateTime`` (UTC POSIX s). Versions order by (``modification_number``, ``modified_s``).
    """

    id: str
    program_id: str
    event_name: str | None
    modification_number: int
    intervals: tuple[DrInterval, ...]
    priority: int | None = None
    modified_s: float | None = None
    cancelled: bool = False

    @property
    def version(self) -> tuple[int, float]:
        """Sort key of this version of the event: newer versions compare greater."""
        return (self.modification_number, -math.inf if self.modified_s is None else self.modified_s)

    @property
    def start_s(self) -> float | None:
        """Start of the first interval (None without intervals)."""
        return self.intervals[0].start_s if self.intervals else None

    @property
    def end_s(self) -> float | None:
        """End of the last interval (None without intervals; inf when open-ended)."""
        return self.intervals[-1].end_s if self.intervals else None

    def interval_at(self, now_s: float) -> DrInterval | None:
        """The interval in force at ``now_s``, or None (always None once cancelled)."""
        if self.cancelled:
            return None
        for interval in self.intervals:
            if interval.contains(now_s):
                return interval
        return None

    def is_active(self, now_s: float) -> bool:
        """True while an interval of the event is in force."""
        return self.interval_at(now_s) is not None

    def payloads_at(self, now_s: float) -> tuple[DrPayload, ...]:
        """The payloads in force at ``now_s`` (empty when none)."""
        interval = self.interval_at(now_s)
        return () if interval is None else interval.payloads

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form for status output."""
        return {
            "id": self.id,
            "program_id": self.program_id,
            "event_name": self.event_name,
            "modification_number": self.modification_number,
            "modified_s": self.modified_s,
            "priority": self.priority,
            "cancelled": self.cancelled,
            "intervals": [i.to_json() for i in self.intervals],
        }


def parse_datetime_s(value: object, where: str = "time") -> float:
    """An ISO 8601 date-time with a UTC offset (``2023-06-15T09:30:00Z``) as UTC POSIX seconds.

    Raises:
        PayloadError: ``bad_time`` when it is not a string, has no offset, or is not a date-time.
    """
    if not isinstance(value, str):
        raise PayloadError("bad_time", f"{where}: expected an ISO 8601 date-time string, got {_kind(value)}")
    if len(value) > 64:
        raise PayloadError("bad_time", f"{where}: {len(value)} characters is too long for a date-time")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError("bad_time", f"{where}: {_short(value)} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PayloadError("bad_time", f"{where}: {_short(value)} has no UTC offset (add Z or +hh:mm)")
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        raise PayloadError("bad_time", f"{where}: {_short(value)} is out of range") from None


def parse_duration_s(value: object, where: str = "duration") -> float:
    """An ISO 8601 duration (``PT15M``, ``PT1H30M``, ``P1D``, ``P1W``) in seconds; ``P9999Y`` is inf.

    Years and months are refused (their length depends on the calendar), except OpenADR's ``P9999Y``.

    Raises:
        PayloadError: ``bad_duration`` when malformed; ``interval_order`` for a negative duration.
    """
    if not isinstance(value, str):
        raise PayloadError("bad_duration", f"{where}: expected an ISO 8601 duration, got {_kind(value)}")
    if value == _INFINITE_DURATION:
        return math.inf
    match = _DURATION_RE.fullmatch(value)
    if match is None or value in ("P", "-P") or value.endswith("T"):
        raise PayloadError("bad_duration", f"{where}: {_short(value)} is not an ISO 8601 duration")
    sign, years, months, weeks, days, hours, minutes, seconds = match.groups()
    if years or months:
        raise PayloadError("bad_duration", f"{where}: {value}: years and months have no fixed length")
    total = (
        float(weeks or 0) * 604800.0
        + float(days or 0) * 86400.0
        + float(hours or 0) * 3600.0
        + float(minutes or 0) * 60.0
        + float(seconds or 0)
    )
    if sign and total > 0:
        raise PayloadError(
            "interval_order", f"{where}: {value} is negative: the interval ends before it starts"
        )
    return total


def parse_dr_event(obj: object) -> DemandResponseEvent:
    """Validate an OpenADR 3 event object (or a 3.1 notification carrying one) into the event model.

    Args:
        obj: decoded JSON: an event, or ``{"objectType": "EVENT", "operation": ..., "object": {...}}``.

    Raises:
        PayloadError: with a stable reason (see the module docstring) and where the problem is.
    """
    if not isinstance(obj, Mapping):
        hint = " (publish one event per message)" if isinstance(obj, list) else ""
        raise PayloadError("bad_schema", f"expected an OpenADR 3 event object, got {_kind(obj)}{hint}")
    cancelled = False
    if "operation" in obj and "object" in obj:
        operation = obj["operation"]
        if obj.get("objectType") != "EVENT":
            raise PayloadError("bad_schema", f"notification for objectType {_short(obj.get('objectType'))}")
        if operation not in ("GET", "POST", "PUT", "DELETE"):
            raise PayloadError(
                "bad_schema", f"notification operation {_short(operation)} is not GET/POST/PUT/DELETE"
            )
        cancelled = operation == "DELETE"
        obj = obj["object"]
        if not isinstance(obj, Mapping):
            raise PayloadError("bad_schema", f"notification object: expected an event, got {_kind(obj)}")
    return _parse_event(obj, cancelled)


def _parse_event(obj: Mapping[str, Any], cancelled: bool) -> DemandResponseEvent:
    object_type = obj.get("objectType", "EVENT")
    if object_type != "EVENT":
        raise PayloadError(
            "bad_schema", f"objectType {_short(object_type)}: only EVENT objects carry DR events"
        )
    if "event_descriptor" in obj or "event_signals" in obj or "message_type" in obj:
        raise PayloadError("bad_schema", "this is OpenADR 2.0b (openleadr); greenferry reads OpenADR 3")
    event_id = _required_text(obj, "id")
    program_id = _required_text(obj, "programID")
    event_name = _text(obj, "eventName", required=False, limit=MAX_TEXT_CHARS)
    priority = _optional_int(obj, "priority")
    modification_number = _optional_int(obj, "modificationNumber")
    modified = obj.get("modificationDateTime")
    modified_s = None if modified is None else parse_datetime_s(modified, "modificationDateTime")
    flag = obj.get("cancelled", False)
    if not isinstance(flag, bool):
        raise PayloadError("bad_schema", f"cancelled: expected true or false, got {_kind(flag)}")
    cancelled = cancelled or flag

    raw_intervals = obj.get("intervals")
    if raw_intervals is None and cancelled:
        raw_intervals = []  # a cancellation may name only the event
    if not isinstance(raw_intervals, list):
        if raw_intervals is None:
            raise PayloadError("missing_field", "intervals: an event needs at least one interval")
        raise PayloadError("bad_schema", f"intervals: expected a list, got {_kind(raw_intervals)}")
    if not raw_intervals and not cancelled:
        raise PayloadError("missing_field", "intervals: an event needs at least one interval")
    if len(raw_intervals) > MAX_INTERVALS:
        raise PayloadError("too_many_intervals", f"{len(raw_intervals)} intervals (limit {MAX_INTERVALS})")

    units = _descriptor_units(obj.get("payloadDescriptors"))
    period = obj.get("intervalPeriod")
    event_start_s: float | None = None
    event_duration_s: float | None = None
    if period is not None:
        event_start_s, event_duration_s = _period(period, "intervalPeriod", need_start=True)

    intervals: list[DrInterval] = []
    cursor_s = event_start_s
    for index, raw in enumerate(raw_intervals):
        where = f"intervals[{index}]"
        if not isinstance(raw, Mapping):
            raise PayloadError("bad_schema", f"{where}: expected an object, got {_kind(raw)}")
        start_s, duration_s = cursor_s, event_duration_s
        own = raw.get("intervalPeriod")
        if own is not None:
            own_start, own_duration = _period(own, f"{where}.intervalPeriod", need_start=False)
            start_s = own_start if own_start is not None else start_s
            duration_s = own_duration if own_duration is not None else duration_s
        if start_s is None:
            raise PayloadError("missing_field", f"{where}: no intervalPeriod start here nor on the event")
        if duration_s is None:
            duration_s = 0.0  # OpenADR's default duration is PT0S
        if intervals and (start_s < intervals[-1].end_s or math.isinf(start_s)):
            raise PayloadError("interval_order", f"{where} starts before intervals[{index - 1}] ends")
        interval_id = raw.get("id")
        if interval_id is not None and (isinstance(interval_id, bool) or not isinstance(interval_id, int)):
            raise PayloadError("bad_schema", f"{where}.id: expected an integer, got {_kind(interval_id)}")
        payloads = _payloads(raw.get("payloads"), where, units)
        intervals.append(DrInterval(start_s, duration_s, payloads, interval_id))
        cursor_s = start_s + duration_s
    return DemandResponseEvent(
        id=event_id,
        program_id=program_id,
        event_name=event_name,
        modification_number=modification_number or 0,
        intervals=tuple(intervals),
        priority=priority,
        modified_s=modified_s,
        cancelled=cancelled,
    )


def _period(obj: object, where: str, *, need_start: bool) -> tuple[float | None, float | None]:
    if not isinstance(obj, Mapping):
        raise PayloadError("bad_schema", f"{where}: expected an object, got {_kind(obj)}")
    start = obj.get("start")
    if start is None and need_start:
        raise PayloadError("missing_field", f"{where}.start")
    start_s = None if start is None else parse_datetime_s(start, f"{where}.start")
    duration = obj.get("duration")
    duration_s = None if duration is None else parse_duration_s(duration, f"{where}.duration")
    end_s = (start_s or 0.0) + (duration_s or 0.0)
    if math.isfinite(end_s) and end_s > _MAX_TIME_S:
        raise PayloadError("bad_duration", f"{where}: ends after the year 9999")
    return start_s, duration_s


def _descriptor_units(descriptors: object) -> dict[str, str]:
    if descriptors is None:
        return {}
    if not isinstance(descriptors, list):
        raise PayloadError("bad_schema", f"payloadDescriptors: expected a list, got {_kind(descriptors)}")
    units: dict[str, str] = {}
    for index, item in enumerate(descriptors[:MAX_VALUES]):
        if not isinstance(item, Mapping):
            raise PayloadError("bad_schema", f"payloadDescriptors[{index}]: expected an object")
        payload_type, unit = item.get("payloadType"), item.get("units")
        if isinstance(payload_type, str) and isinstance(unit, str):
            units[payload_type] = unit
    return units


def _payloads(raw: object, where: str, units: Mapping[str, str]) -> tuple[DrPayload, ...]:
    if not isinstance(raw, list) or not raw:
        if raw is None or raw == []:
            raise PayloadError("missing_field", f"{where}.payloads: an interval needs at least one payload")
        raise PayloadError("bad_schema", f"{where}.payloads: expected a list, got {_kind(raw)}")
    if len(raw) > MAX_VALUES:
        raise PayloadError("too_many_values", f"{where}.payloads: {len(raw)} payloads (limit {MAX_VALUES})")
    out: list[DrPayload] = []
    for index, item in enumerate(raw):
        here = f"{where}.payloads[{index}]"
        if not isinstance(item, Mapping):
            raise PayloadError("bad_schema", f"{here}: expected an object, got {_kind(item)}")
        payload_type = item.get("type")
        if not isinstance(payload_type, str):
            raise PayloadError("missing_field", f"{here}.type")
        if payload_type not in KNOWN_PAYLOAD_TYPES:
            raise PayloadError(
                "unknown_dr_payload", f"{here}.type {_short(payload_type)} is not an OpenADR 3 type"
            )
        values = item.get("values")
        if not isinstance(values, list):
            raise PayloadError(
                "missing_field" if values is None else "bad_schema", f"{here}.values: expected a list"
            )
        if len(values) > MAX_VALUES:
            raise PayloadError("too_many_values", f"{here}.values: {len(values)} values (limit {MAX_VALUES})")
        out.append(_payload(payload_type, values, f"{here}.values", units.get(payload_type)))
    return tuple(out)


def _payload(payload_type: str, values: Sequence[object], where: str, unit: str | None) -> DrPayload:
    if payload_type in _ALERT_TYPES:
        texts: list[DrValue] = []
        for index, value in enumerate(values):
            if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
                raise PayloadError("bad_dr_value", f"{where}[{index}]: {payload_type} carries text")
            texts.append(value)
        return DrPayload(payload_type, tuple(texts), unit)
    if payload_type in _CURVE_TYPES:
        points: list[DrValue] = []
        for index, value in enumerate(values):
            if not isinstance(value, Mapping) or "x" not in value or "y" not in value:
                raise PayloadError("bad_dr_value", f"{where}[{index}]: CURVE carries points {{x, y}}")
            points.append(
                (_number(value["x"], f"{where}[{index}].x"), _number(value["y"], f"{where}[{index}].y"))
            )
        return DrPayload(payload_type, tuple(points), unit)
    numbers = [_number(value, f"{where}[{index}]") for index, value in enumerate(values)]
    for index, number in enumerate(numbers):
        here = f"{where}[{index}]"
        if payload_type in _LEVEL_TYPES and number not in (0.0, 1.0, 2.0, 3.0):
            raise PayloadError("bad_dr_value", f"{here}: SIMPLE levels are 0, 1, 2 or 3, got {number!r}")
        if payload_type in _BINARY_TYPES and number not in (0.0, 1.0):
            raise PayloadError("bad_dr_value", f"{here}: {payload_type} is 0 or 1, got {number!r}")
        if payload_type in _FRACTION_TYPES and not 0.0 <= number <= 1.0:
            raise PayloadError("bad_dr_value", f"{here}: OLS values lie in 0..1, got {number!r}")
        if payload_type in _POWER_TYPES and number < 0:
            raise PayloadError("negative_power", f"{here}: {payload_type} {number!r} is negative")
        if payload_type in _NON_NEGATIVE_TYPES and number < 0:
            raise PayloadError("bad_dr_value", f"{here}: {payload_type} {number!r} is negative")
        if payload_type in _CARBON_TYPES and number < 0:
            raise PayloadError("negative_carbon", f"{here}: GHG {number!r} is negative")
    if payload_type in _CONVERTED_TYPES and unit is not None and unit.upper() in _POWER_UNITS_W:
        factor = _POWER_UNITS_W[unit.upper()]
        numbers = [n * factor for n in numbers]
        unit = "W"
    return DrPayload(payload_type, tuple(n + 0.0 for n in numbers), unit)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("bad_dr_value", f"{where}: expected a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise PayloadError("not_finite", f"{where}: the number is too large") from None
    if not math.isfinite(number):
        raise PayloadError("not_finite", f"{where}: {number!r}")
    return number


def _text(obj: Mapping[str, Any], key: str, *, required: bool, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError("missing_field", key)
        return None
    if not isinstance(value, str):
        raise PayloadError("bad_schema", f"{key}: expected a string, got {_kind(value)}")
    if required and not value:
        raise PayloadError("missing_field", f"{key} is empty")
    if len(value) > limit:
        raise PayloadError("bad_schema", f"{key}: {len(value)} characters (limit {limit})")
    return value


def _required_text(obj: Mapping[str, Any], key: str) -> str:
    value = _text(obj, key, required=True, limit=_MAX_ID_CHARS)
    if value is None:  # _text raised already; this narrows the type
        raise PayloadError("missing_field", key)
    return value


def _optional_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise PayloadError("bad_schema", f"{key}: expected a non-negative integer, got {_short(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DrEventBook:
    """The live demand-response events by id: newer versions replace older, cancellations remove.

    A cancelled event's version is remembered (a bounded tombstone), so an older copy arriving late does
    not bring it back. At most ``max_events`` events are kept; beyond that the one ending first goes.
    """

    def __init__(self, max_events: int = 1000) -> None:
        if max_events < 1:
            raise ValueError("the book needs room for at least one event")
        self._max_events = max_events
        self._events: dict[str, DemandResponseEvent] = {}
        self._tombstones: dict[str, tuple[int, float]] = {}

    def apply(self, event: DemandResponseEvent) -> bool:
        """Apply one event version; True when the book changed (older or duplicate versions are ignored)."""
        current = self._events.get(event.id)
        tomb = self._tombstones.get(event.id)
        if event.cancelled:
            if current is not None and event.version < current.version:
                return False
            if tomb is not None and event.version <= tomb:
                return False
            self._events.pop(event.id, None)
            self._tombstones.pop(event.id, None)
            self._tombstones[event.id] = event.version
            while len(self._tombstones) > self._max_events:
                del self._tombstones[next(iter(self._tombstones))]
            return current is not None
        if tomb is not None and event.version <= tomb:
            return False
        if current is not None and event.version <= current.version:
            return False
        self._tombstones.pop(event.id, None)
        self._events[event.id] = event
        if len(self._events) > self._max_events:
            first = min(self._events.values(), key=lambda e: e.end_s if e.end_s is not None else -math.inf)
            del self._events[first.id]
        return True

    def get(self, event_id: str) -> DemandResponseEvent | None:
        """The current version of ``event_id``, or None."""
        return self._events.get(event_id)

    def events(self) -> tuple[DemandResponseEvent, ...]:
        """Every event in the book, earliest start first."""
        return tuple(sorted(self._events.values(), key=_start_key))

    def active(self, now_s: float) -> tuple[DemandResponseEvent, ...]:
        """Events with an interval in force at ``now_s``, most important (lowest priority number) first."""
        live = [e for e in self._events.values() if e.is_active(now_s)]
        return tuple(sorted(live, key=lambda e: (math.inf if e.priority is None else e.priority, e.id)))

    def prune(self, now_s: float) -> int:
        """Drop events whose last interval ended before ``now_s``; returns how many went."""
        ended = [i for i, e in self._events.items() if e.end_s is None or e.end_s <= now_s]
        for event_id in ended:
            del self._events[event_id]
        return len(ended)

    def __len__(self) -> int:
        return len(self._events)

    def to_json(self, now_s: float) -> dict[str, Any]:
        """JSON-ready state: every event and the ids active at ``now_s``."""
        return {
            "events": [e.to_json() for e in self.events()],
            "active": [e.id for e in self.active(now_s)],
        }


def _start_key(event: DemandResponseEvent) -> tuple[float, str]:
    start = event.start_s
    return (math.inf if start is None else start, event.id)

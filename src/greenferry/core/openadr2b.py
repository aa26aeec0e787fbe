"""OpenADR 2.0b events (as openleadr hands them to a VEN) converted into the demand-response event model.

openleadr parses an ``oadrDistributeEvent`` into one dict per event: ``event_descriptor`` (``event_id``,
``modification_number``, ``priority``, ``event_status``, ``market_context``, ...), ``active_period``
(``dtstart``, ``duration``), ``event_signals`` (each with ``signal_name``, ``signal_type``, an optional
``measurement`` (the signal's itemBase) and ``intervals`` of ``dtstart``/``duration``/``signal_payload``)
and ``targets``. :func:`parse_openleadr_event` turns one such dict into a
:class:`~greenferry.core.dr.DemandResponseEvent`, the model the daemon already uses for OpenADR 3 events.

Times may be tz-aware ``datetime`` objects (openleadr) or ISO 8601 strings with an offset (the JSON examples);
durations ``timedelta``, seconds (int or float) or ISO 8601 durations. An interval without ``dtstart`` starts
where the previous one of its signal ended (the first at the active period's start). The last interval of a
signal with duration 0 lasts to the end of the active period, and an active period of duration 0 is
open-ended (as openleadr treats it). Times are handled in integer microseconds, so intervals that meet do so
exactly.

Signals map onto the OpenADR 3 payload types of :mod:`greenferry.core.dr` (docs/openadr.md has the table):

=====================================  =====================  ==============================================
2.0b signal (name / type)              model payload           value
=====================================  =====================  ==============================================
SIMPLE / level                         SIMPLE                  0, 1, 2 or 3
ELECTRICITY_PRICE, ENERGY_PRICE/price  PRICE                   per kWh (currencyPerKWh or no itemBase)
LOAD_DISPATCH / setpoint,              DISPATCH_SETPOINT       W (itemBase powerReal with its SI scale;
x-loadDispatchSetpoint                                         W when the signal has no itemBase)
LOAD_CONTROL / x-loadControlCapacity   OLS                     fraction 0..1 of capacity; a signal with any
                                                               value above 1 is read as percent (0..100)
LOAD_CONTROL / x-loadControlPercentOff OLS                     1 + p/100 for p in -100..0 (a change of p %
                                                               from normal load); p > 0 (more load) refused
LOAD_CONTROL / x-loadControlLevelOffs  SIMPLE                  n = 0, 1, 2, 3 (more shedding as n grows;
                                                               n > 3 is 3); n < 0 (more load) refused
LOAD_CONTROL / x-loadControlSetpoint   DISPATCH_SETPOINT       only with a power itemBase (W, kW, MW)
=====================================  =====================  ==============================================

Any other signal is refused with ``unknown_dr_payload``, naming the signal. When an event has several signals
their intervals are merged: each model interval carries the payloads of every signal in force over it.

A cancelled event (``event_status: cancelled``) converts to ``cancelled=True`` with no intervals: a
cancellation only has to name the event, so its signals are not read (and cannot make it fail).

Everything here is pure: no I/O, no clock. Errors are :class:`~greenferry.errors.PayloadError` with the
reasons of :mod:`greenferry.core.dr` (``bad_schema``, ``missing_field``, ``unknown_dr_payload``,
``bad_dr_value``, ``bad_time``, ``bad_duration``, ``interval_order``, ``not_finite``, ``negative_power``,
``too_many_intervals``, ``too_many_values``) and ``too_many_signals``; the message says where
(``event_signals[0].intervals[3].signal_payload``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from greenferry.core.dr import (
    _MAX_ID_CHARS,
    _MAX_TIME_S,
    MAX_INTERVALS,
    MAX_TEXT_CHARS,
    MAX_VALUES,
    DemandResponseEvent,
    DrInterval,
    DrPayload,
    _kind,
    _number,
    _optional_int,
    _payload,
    _short,
    _text,
    parse_datetime_s,
    parse_duration_s,
)
from greenferry.errors import PayloadError

__all__ = ["EVENT_STATUSES", "MAX_SIGNALS", "is_test_event", "parse_openleadr_event"]

_T = TypeVar("_T")

MAX_SIGNALS = 32  # event signals per event
EVENT_STATUSES = frozenset({"none", "far", "near", "active", "completed", "cancelled"})

_US_PER_S = 1_000_000
_MAX_TIME_US = int(_MAX_TIME_S) * _US_PER_S
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_OPEN = math.inf  # the end of an open-ended interval, in microseconds

# siScaleCode multipliers (OpenADR 2.0b / EMIX).
_SI_SCALE = {
    "p": 1e-12,
    "n": 1e-9,
    "micro": 1e-6,
    "m": 1e-3,
    "c": 1e-2,
    "d": 1e-1,
    "none": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}
_POWER_UNITS_W = {"W": 1.0, "KW": 1e3, "MW": 1e6}
_SIMPLE_NAMES = frozenset({"SIMPLE", "simple"})
_PRICE_NAMES = frozenset({"ELECTRICITY_PRICE", "ENERGY_PRICE"})
_DISPATCH_SETPOINT_TYPES = frozenset({"setpoint", "x-loadDispatchSetpoint"})
_SUPPORTED = (
    "SIMPLE/level, ELECTRICITY_PRICE/price, ENERGY_PRICE/price, LOAD_DISPATCH/setpoint, "
    "LOAD_DISPATCH/x-loadDispatchSetpoint, LOAD_CONTROL/x-loadControlCapacity, "
    "LOAD_CONTROL/x-loadControlPercentOffset, LOAD_CONTROL/x-loadControlLevelOffset, "
    "LOAD_CONTROL/x-loadControlSetpoint (with a power itemBase)"
)


@dataclass(frozen=True, slots=True)
class _Piece:
    """One interval of one signal: [start_us, end_us) carrying one value of the signal's model type."""

    start_us: int
    end_us: float  # int, or _OPEN
    value: float
    where: str


def parse_openleadr_event(obj: object) -> DemandResponseEvent:
    """Validate one OpenADR 2.0b event dict (openleadr's ``on_event`` argument) into the event model.

    Args:
        obj: an event as openleadr's VEN hands it to ``on_event``, or the same with ISO 8601 times and
            durations in seconds (the ``*.openleadr.json`` documentation examples).

    Raises:
        PayloadError: with a stable reason (see the module docstring) and where the problem is.
    """
    if not isinstance(obj, Mapping):
        raise PayloadError("bad_schema", f"expected an OpenADR 2.0b event (a mapping), got {_kind(obj)}")
    descriptor = _mapping(obj, "event_descriptor", "event_descriptor")
    event_id = _at("event_descriptor", _text, descriptor, "event_id", required=True, limit=_MAX_ID_CHARS)
    if event_id is None:  # _text raised already; this narrows the type
        raise PayloadError("missing_field", "event_descriptor.event_id")
    where = f"event {_short(event_id)}: event_descriptor"
    modification_number = _at(where, _optional_int, descriptor, "modification_number")
    priority = _at(where, _optional_int, descriptor, "priority")
    status = descriptor.get("event_status")
    if status is not None and (not isinstance(status, str) or status not in EVENT_STATUSES):
        raise PayloadError(
            "bad_schema",
            f"{where}.event_status {_short(status)} is not one of {', '.join(sorted(EVENT_STATUSES))}",
        )
    market_context = _at(where, _text, descriptor, "market_context", required=False, limit=MAX_TEXT_CHARS)
    comment = _at(where, _text, descriptor, "vtn_comment", required=False, limit=MAX_TEXT_CHARS)
    modified = descriptor.get("modification_date_time")
    modified_s = (
        None if modified is None else _time_us(modified, f"{where}.modification_date_time") / _US_PER_S
    )
    where_event = f"event {_short(event_id)}"
    _check_targets(obj.get("targets"), where_event)
    cancelled = status == "cancelled"
    intervals = () if cancelled else _intervals(obj, where_event)
    return DemandResponseEvent(
        id=event_id,
        program_id=market_context or "",
        event_name=comment,
        modification_number=modification_number or 0,
        intervals=intervals,
        priority=priority or None,  # 2.0b: 0 is "no priority", the lowest
        modified_s=modified_s,
        cancelled=cancelled,
    )


def is_test_event(obj: object) -> bool:
    """True when the event's descriptor marks it as a test (``test_event`` other than false/absent).

    2.0b: "anything other than false indicates a test event"; a VEN answers it but does not act on it.
    """
    if not isinstance(obj, Mapping):
        return False
    descriptor = obj.get("event_descriptor")
    if not isinstance(descriptor, Mapping):
        return False
    flag = descriptor.get("test_event")
    if flag is None or flag is False:
        return False
    return not (isinstance(flag, str) and flag.strip().lower() in ("", "false"))


def _check_targets(targets: object, where_event: str) -> None:
    """Targets are not filtered on (the VTN sent the event to this VEN), only bounded."""
    if targets is None:
        return
    if isinstance(targets, list) and len(targets) > MAX_VALUES:
        raise PayloadError("too_many_values", f"{where_event}: {len(targets)} targets (limit {MAX_VALUES})")
    if not isinstance(targets, list) or not all(isinstance(t, Mapping) for t in targets):
        raise PayloadError("bad_schema", f"{where_event}: targets: expected a list of mappings")


def _intervals(obj: Mapping[str, Any], where_event: str) -> tuple[DrInterval, ...]:
    period = _mapping(obj, "active_period", f"{where_event}: active_period")
    active_start_us = _time_us(
        _required(period, "dtstart", f"{where_event}: active_period"), f"{where_event}: active_period.dtstart"
    )
    active_duration_us = _duration_us(
        _required(period, "duration", f"{where_event}: active_period"),
        f"{where_event}: active_period.duration",
    )
    active_end_us: float = _OPEN if active_duration_us == 0 else active_start_us + active_duration_us
    if active_end_us != _OPEN and active_end_us > _MAX_TIME_US:
        raise PayloadError("bad_duration", f"{where_event}: active_period ends after the year 9999")

    signals = obj.get("event_signals")
    if isinstance(signals, Mapping) and "event_signals" in signals:  # openleadr sometimes nests them
        signals = signals["event_signals"]
    if signals is None:
        raise PayloadError("missing_field", f"{where_event}: event_signals: an event needs a signal")
    if not isinstance(signals, list):
        raise PayloadError(
            "bad_schema", f"{where_event}: event_signals: expected a list, got {_kind(signals)}"
        )
    if not signals:
        raise PayloadError("missing_field", f"{where_event}: event_signals: an event needs a signal")
    if len(signals) > MAX_SIGNALS:
        raise PayloadError(
            "too_many_signals", f"{where_event}: {len(signals)} event signals (limit {MAX_SIGNALS})"
        )
    total = 0
    for index, signal in enumerate(signals):
        raw = signal.get("intervals") if isinstance(signal, Mapping) else None
        total += len(raw) if isinstance(raw, list) else 0
        if total > MAX_INTERVALS:
            raise PayloadError(
                "too_many_intervals",
                f"{where_event}: event_signals[{index}]: more than {MAX_INTERVALS} intervals in all",
            )
    tracks: list[tuple[str, str | None, list[_Piece]]] = []
    for index, signal in enumerate(signals):
        where = f"{where_event}: event_signals[{index}]"
        if not isinstance(signal, Mapping):
            raise PayloadError("bad_schema", f"{where}: expected a mapping, got {_kind(signal)}")
        tracks.append(_signal(signal, where, active_start_us, active_end_us))
    return _merge(tracks, where_event)


def _signal(
    signal: Mapping[str, Any], where: str, active_start_us: int, active_end_us: float
) -> tuple[str, str | None, list[_Piece]]:
    """One signal as (model payload type, units, its intervals with the values in model units)."""
    name = signal.get("signal_name")
    signal_type = signal.get("signal_type")
    if not isinstance(name, str):
        raise PayloadError("missing_field" if name is None else "bad_schema", f"{where}.signal_name")
    if not isinstance(signal_type, str):
        raise PayloadError("missing_field" if signal_type is None else "bad_schema", f"{where}.signal_type")
    if len(name) > _MAX_ID_CHARS or len(signal_type) > _MAX_ID_CHARS:
        raise PayloadError("bad_schema", f"{where}: signal_name or signal_type longer than {_MAX_ID_CHARS}")
    raw_intervals = signal.get("intervals")
    if not isinstance(raw_intervals, list) or not raw_intervals:
        if raw_intervals is None or raw_intervals == []:
            raise PayloadError("missing_field", f"{where}.intervals: a signal needs at least one interval")
        raise PayloadError("bad_schema", f"{where}.intervals: expected a list, got {_kind(raw_intervals)}")

    pieces: list[_Piece] = []
    cursor_us = active_start_us
    for index, raw in enumerate(raw_intervals):
        here = f"{where}.intervals[{index}]"
        if not isinstance(raw, Mapping):
            raise PayloadError("bad_schema", f"{here}: expected a mapping, got {_kind(raw)}")
        start = raw.get("dtstart")
        start_us = cursor_us if start is None else _time_us(start, f"{here}.dtstart")
        duration_us = _duration_us(_required(raw, "duration", here), f"{here}.duration")
        value = _number(_required(raw, "signal_payload", here), f"{here}.signal_payload")
        if pieces and start_us < pieces[-1].end_us:
            raise PayloadError("interval_order", f"{here} starts before intervals[{index - 1}] ends")
        if start_us < active_start_us:
            raise PayloadError("interval_order", f"{here} starts before the event's active period")
        end_us: float = start_us + duration_us
        if duration_us == 0 and index == len(raw_intervals) - 1:
            end_us = active_end_us  # a last interval of duration 0 runs to the end of the event
        if end_us > active_end_us:
            raise PayloadError("interval_order", f"{here} ends after the event's active period")
        if end_us != _OPEN and end_us > _MAX_TIME_US:
            raise PayloadError("bad_duration", f"{here} ends after the year 9999")
        pieces.append(_Piece(start_us, end_us, value, f"{here}.signal_payload"))
        cursor_us = start_us + duration_us

    payload_type, units, values = _convert(name, signal_type, signal.get("measurement"), pieces, where)
    converted = [_Piece(p.start_us, p.end_us, v, p.where) for p, v in zip(pieces, values, strict=True)]
    return payload_type, units, converted


def _convert(
    name: str, signal_type: str, measurement: object, pieces: Sequence[_Piece], where: str
) -> tuple[str, str | None, list[float]]:
    """The model payload type, units and values for one signal; validated by core.dr's payload rules."""
    values = [p.value for p in pieces]
    units: str | None = None
    label = f"{where}.measurement ({name}/{signal_type})"
    if name in _SIMPLE_NAMES and signal_type == "level":
        payload_type = "SIMPLE"
    elif name in _PRICE_NAMES and signal_type == "price":
        payload_type = "PRICE"
        units, factor = _price_units(measurement, label)
        values = [v * factor for v in values]
    elif (name == "LOAD_DISPATCH" and signal_type in _DISPATCH_SETPOINT_TYPES) or (
        name == "LOAD_CONTROL" and signal_type == "x-loadControlSetpoint"
    ):
        payload_type, units = "DISPATCH_SETPOINT", "W"
        factor = _power_factor_w(measurement, label, required=name == "LOAD_CONTROL")
        values = [v * factor for v in values]
    elif name == "LOAD_CONTROL" and signal_type == "x-loadControlCapacity":
        payload_type = "OLS"
        if any(v > 1.0 for v in values):  # the whole signal is in percent
            for piece in pieces:
                if piece.value > 100.0:
                    raise PayloadError(
                        "bad_dr_value",
                        f"{piece.where}: x-loadControlCapacity {piece.value!r} is above 100 % "
                        "(read as percent because a value of the signal is above 1)",
                    )
            values = [v / 100.0 for v in values]
    elif name == "LOAD_CONTROL" and signal_type == "x-loadControlPercentOffset":
        payload_type = "OLS"
        for piece in pieces:
            if not -100.0 <= piece.value <= 0.0:
                raise PayloadError(
                    "bad_dr_value",
                    f"{piece.where}: x-loadControlPercentOffset {piece.value!r}: greenferry follows "
                    "reductions of 0..100 % from normal load (-100..0), not requests for more load",
                )
        values = [1.0 + v / 100.0 for v in values]
    elif name == "LOAD_CONTROL" and signal_type == "x-loadControlLevelOffset":
        payload_type = "SIMPLE"
        for piece in pieces:
            if piece.value < 0 or piece.value != int(piece.value):
                raise PayloadError(
                    "bad_dr_value",
                    f"{piece.where}: x-loadControlLevelOffset {piece.value!r}: greenferry follows whole "
                    "levels of reduction 0, 1, 2, ... (3 and above shed the most), not for more load",
                )
        values = [min(v, 3.0) for v in values]
    else:
        raise PayloadError(
            "unknown_dr_payload",
            f"{where}: greenferry does not read signal {_short(name)}/{_short(signal_type)} "
            f"(it reads {_SUPPORTED})",
        )
    # core.dr's own rules (levels, fractions, non-negative power, finiteness) with 2.0b locations.
    checked = _payload(payload_type, values, f"{where}.intervals", units)
    return payload_type, checked.units, [float(v) for v in checked.values if isinstance(v, float)]


def _power_factor_w(measurement: object, label: str, *, required: bool) -> float:
    """Multiplier from the signal's itemBase to W (1.0 without an itemBase, unless one is required)."""
    if measurement is None:
        if required:
            raise PayloadError(
                "bad_dr_value", f"{label}: a load control setpoint needs a power unit (W, kW or MW)"
            )
        return 1.0
    unit, scale = _unit_scale(measurement, label)
    name = measurement.get("name") if isinstance(measurement, Mapping) else None
    if name in ("powerApparent", "powerReactive") or unit is None or unit.upper() not in _POWER_UNITS_W:
        raise PayloadError(
            "bad_dr_value", f"{label}: a setpoint in {_short(unit)} ({_short(name)}) is not a real power"
        )
    return _POWER_UNITS_W[unit.upper()] * scale


def _price_units(measurement: object, label: str) -> tuple[str | None, float]:
    """Units of a price signal (``<currency>/kWh``) and the multiplier its SI scale asks for."""
    if measurement is None:
        return None, 1.0
    unit, scale = _unit_scale(measurement, label)
    name = measurement.get("name") if isinstance(measurement, Mapping) else None
    if name != "currencyPerKWh":
        raise PayloadError(
            "bad_dr_value",
            f"{label}: {_short(name)} prices are not per kWh (greenferry reads currencyPerKWh)",
        )
    return (None if unit is None else f"{unit}/kWh"), scale


def _unit_scale(measurement: object, label: str) -> tuple[str | None, float]:
    if not isinstance(measurement, Mapping):
        raise PayloadError("bad_schema", f"{label}: expected a mapping, got {_kind(measurement)}")
    unit = measurement.get("unit")
    if unit is not None and (not isinstance(unit, str) or len(unit) > 32):
        raise PayloadError("bad_schema", f"{label}: unit: expected a short string")
    scale = measurement.get("scale")
    if scale is None:
        return unit, 1.0
    if not isinstance(scale, str) or scale not in _SI_SCALE:
        raise PayloadError(
            "bad_dr_value", f"{label}: scale {_short(scale)} is not an SI scale code ({', '.join(_SI_SCALE)})"
        )
    return unit, _SI_SCALE[scale]


def _merge(
    tracks: Sequence[tuple[str, str | None, list[_Piece]]], where_event: str
) -> tuple[DrInterval, ...]:
    """One model interval per span where the set of signals in force stays the same (gaps are left out)."""
    boundaries = sorted({b for _, _, pieces in tracks for p in pieces for b in (p.start_us, p.end_us)})
    cursors = [0] * len(tracks)
    intervals: list[DrInterval] = []
    for start_us, end_us in itertools.pairwise(boundaries):
        payloads: list[DrPayload] = []
        sources: dict[str, str] = {}
        for track, (payload_type, units, pieces) in enumerate(tracks):
            while cursors[track] < len(pieces) and pieces[cursors[track]].end_us <= start_us:
                cursors[track] += 1
            if cursors[track] == len(pieces):
                continue
            piece = pieces[cursors[track]]
            if piece.start_us > start_us:
                continue
            if payload_type in sources:
                raise PayloadError(
                    "bad_schema",
                    f"{sources[payload_type]} and {piece.where.removeprefix(where_event + ': ')} both give "
                    f"{payload_type} at the same time",
                )
            sources[payload_type] = piece.where
            payloads.append(DrPayload(payload_type, (piece.value,), units))
        if not payloads:
            continue
        if len(intervals) >= MAX_INTERVALS:
            raise PayloadError(
                "too_many_intervals", f"{where_event}: the signals make more than {MAX_INTERVALS} intervals"
            )
        duration_s = math.inf if end_us == _OPEN else (end_us - start_us) / _US_PER_S
        intervals.append(DrInterval(start_us / _US_PER_S, duration_s, tuple(payloads), len(intervals)))
    if not intervals:  # every interval lasted 0 s
        raise PayloadError("missing_field", f"{where_event}: no interval of the event lasts longer than 0 s")
    return tuple(intervals)


def _time_us(value: object, where: str) -> int:
    """A tz-aware datetime or an ISO 8601 string with an offset, as integer UTC POSIX microseconds."""
    if isinstance(value, str):
        seconds = parse_datetime_s(value, where)
        return round(seconds * _US_PER_S)
    if not isinstance(value, dt.datetime):
        raise PayloadError("bad_time", f"{where}: expected a date-time, got {_kind(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PayloadError("bad_time", f"{where}: {value.isoformat()} has no UTC offset (naive datetime)")
    try:
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    except OverflowError:
        raise PayloadError("bad_time", f"{where}: {value.isoformat()} is out of range") from None


def _duration_us(value: object, where: str) -> int:
    """A timedelta, seconds or an ISO 8601 duration, as non-negative integer microseconds."""
    if isinstance(value, dt.timedelta):
        micros = value // dt.timedelta(microseconds=1)
    elif isinstance(value, str):
        seconds = parse_duration_s(value, where)
        if math.isinf(seconds):
            raise PayloadError(
                "bad_duration", f"{where}: an OpenADR 2.0b duration is finite (0 is open-ended)"
            )
        micros = round(seconds * _US_PER_S)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = _number(value, where)
        if abs(seconds) > _MAX_TIME_S:
            raise PayloadError("bad_duration", f"{where}: {seconds!r} s is longer than the calendar")
        micros = round(seconds * _US_PER_S)
    else:
        raise PayloadError(
            "bad_duration", f"{where}: expected a duration (seconds or timedelta), got {_kind(value)}"
        )
    if micros < 0:
        raise PayloadError(
            "interval_order", f"{where}: {micros / _US_PER_S} s is negative: it ends before it starts"
        )
    if micros > _MAX_TIME_US:
        raise PayloadError("bad_duration", f"{where}: {micros / _US_PER_S} s is longer than the calendar")
    return micros


def _mapping(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        raise PayloadError("missing_field", where)
    if not isinstance(value, Mapping):
        raise PayloadError("bad_schema", f"{where}: expected a mapping, got {_kind(value)}")
    return value


def _required(obj: Mapping[str, Any], key: str, where: str) -> object:
    value = obj.get(key)
    if value is None:
        raise PayloadError("missing_field", f"{where}.{key}")
    return value


def _at(where: str, parse: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call one of core.dr's field parsers, naming where the field is in a 2.0b event when it fails."""
    try:
        return parse(*args, **kwargs)
    except PayloadError as err:
        raise PayloadError(err.reason, f"{where}.{err.detail}") from None

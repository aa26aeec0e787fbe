"""Signal payload parsers: MQTT payload bytes plus the signal's config in, an SI value out. Pure: no I/O.

Three formats (``[signals.<kind>] format``), see docs/mqtt.md for examples:

- ``number``: plain number text, as Tasmota, evcc and Home Assistant publish (``1234.5``, `` 42 ``,
  ``-3e2``). A JSON-quoted number (``"1234.5"``) is accepted too (HA statestream attributes, Node-RED);
  anything else (``unavailable``, ``1234 W``, ``nan``, ``1_000``) is refused.
- ``json``: the number at the dotted ``field`` path (``ENERGY.Power``; list indices as ``a.0.b``); a string
  holding a number is accepted. For ``surplus_forecast`` the path leads to a window list, for
  ``demand_response`` to an OpenADR 3 event.
- ``greenferry``: greenferry's own schema per kind. Scalars: ``{"value": 1234.5, "time": ...}`` (``time``
  optional, ISO 8601 with an offset or POSIX seconds). Surplus forecast: a list of
  ``{"start", "end", "power_w"}`` windows, or ``{"windows": [...], "time": ...}``. Demand response: an
  OpenADR 3 event or 3.1 notification (:mod:`greenferry.core.dr`).

``scale`` multiplies every scalar value and window power into SI (1000 for kW). Power (production, load,
forecast windows) and carbon intensity may not be negative; prices may (negative prices are real). NaN and
infinities are refused. Every refusal is a :class:`~greenferry.errors.PayloadError` whose ``reason`` is one
of :data:`REASONS`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenferry.core.dr import DemandResponseEvent, parse_datetime_s, parse_dr_event
from greenferry.core.signals import SignalKind, SurplusWindow
from greenferry.errors import ConfigError, PayloadError

if TYPE_CHECKING:
    from greenferry.config import SignalConfig

__all__ = [
    "MAX_WINDOWS",
    "REASONS",
    "ParsedSignal",
    "Parser",
    "SignalValue",
    "make_parser",
    "parse_number",
    "parse_payload",
    "parse_time_s",
    "parse_windows",
]

MAX_WINDOWS = 1000
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024

# Every reason a payload can be refused for (they label greenferry_mqtt_rejected_total).
REASONS = (
    "too_large",
    "empty",
    "invalid_utf8",
    "bad_json",
    "bad_schema",
    "missing_field",
    "not_a_number",
    "not_finite",
    "negative_power",
    "negative_carbon",
    "bad_time",
    "bad_duration",
    "interval_order",
    "windows_overlap",
    "too_many_windows",
    "too_many_intervals",
    "too_many_values",
    "unknown_dr_payload",
    "bad_dr_value",
)

SignalValue = float | tuple[SurplusWindow, ...] | DemandResponseEvent


@dataclass(frozen=True, slots=True)
class ParsedSignal:
    """An accepted payload: the SI value and the payload's own timestamp (UTC POSIX s), if it has one."""

    value: SignalValue
    source_time_s: float | None = None


Parser = Callable[[bytes], ParsedSignal]

# Number text: optional sign, digits with an optional fraction (or a bare fraction), optional exponent,
# optionally inside double quotes, with surrounding whitespace. Python's float() alone would also take
# "nan", "inf", "1_000" and non-ASCII digits.
_NUMBER_BYTES = re.compile(
    rb'[ \t\r\n]*("?)([-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\1[ \t\r\n]*'
)
_NUMBER_TEXT = re.compile(r"[ \t\r\n]*([-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)[ \t\r\n]*")
_MAX_TIME_S = 253402300799.0  # 9999-12-31T23:59:59Z


class _Sign:
    """Which values a kind accepts."""

    ANY = "any"
    POWER = "power"
    CARBON = "carbon"


_SIGN_BY_KIND = {
    SignalKind.PRODUCTION_W: _Sign.POWER,
    SignalKind.LOAD_W: _Sign.POWER,
    SignalKind.CARBON_G_PER_KWH: _Sign.CARBON,
    SignalKind.PRICE_PER_MWH: _Sign.ANY,
}


def make_parser(kind: SignalKind, signal: SignalConfig, max_payload_bytes: int) -> Parser:
    """Build the parser for one configured signal (the path is split and checks are chosen once).

    Args:
        kind: the signal kind (decides the value type and the sign rule).
        signal: its config: ``format``, ``field``, ``scale``.
        max_payload_bytes: larger payloads are refused (``too_large``) before any decoding.

    Raises:
        ConfigError: the format cannot carry this kind (``number`` for a forecast or a DR event).
    """
    scale = float(signal.scale)
    path = _split_path(signal.field) if signal.format == "json" and signal.field else ()
    if kind in _SIGN_BY_KIND:
        sign = _SIGN_BY_KIND[kind]
        if signal.format == "number":
            return _limited(
                max_payload_bytes, lambda p: ParsedSignal(_checked(parse_number(p) * scale, sign))
            )
        if signal.format == "json":

            def scalar_at_path(payload: bytes) -> ParsedSignal:
                value = _number(_at_path(_load_json(payload), path), signal.field or "")
                return ParsedSignal(_checked(value * scale, sign))

            return _limited(max_payload_bytes, scalar_at_path)
        return _limited(max_payload_bytes, lambda p: _greenferry_scalar(_load_json(p), scale, sign))
    if signal.format == "number":
        raise ConfigError(
            f"signals.{kind.value}: format 'number' cannot carry "
            f"{'forecast windows' if kind is SignalKind.SURPLUS_FORECAST else 'a demand-response event'};"
            " use 'greenferry' or 'json'"
        )
    if kind is SignalKind.SURPLUS_FORECAST:
        return _limited(max_payload_bytes, lambda p: _forecast(_at_path(_load_json(p), path), scale))
    if kind is SignalKind.DEMAND_RESPONSE:
        return _limited(max_payload_bytes, lambda p: _dr(_at_path(_load_json(p), path)))
    raise ConfigError(f"signals.{kind.value}: no parser for this kind")


def parse_payload(
    kind: SignalKind, payload: bytes, signal: SignalConfig, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> ParsedSignal:
    """Parse one payload (builds the parser each call; use :func:`make_parser` on hot paths).

    Raises:
        PayloadError: the payload is refused; ``reason`` says why.
        ConfigError: the format cannot carry this kind.
    """
    return make_parser(kind, signal, max_payload_bytes)(payload)


def parse_number(payload: bytes) -> float:
    """Plain number text (optionally JSON-quoted) as a finite float.

    Raises:
        PayloadError: ``empty``, ``invalid_utf8``, ``not_a_number`` or ``not_finite``.
    """
    match = _NUMBER_BYTES.fullmatch(payload)
    if match is None:
        if not payload.strip():
            raise PayloadError("empty", "the payload is empty")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PayloadError("invalid_utf8", f"byte {err.start} is not UTF-8") from None
        raise PayloadError("not_a_number", f"{_short(text)} is not a number")
    value = float(match.group(2))
    if not math.isfinite(value):
        raise PayloadError("not_finite", f"{_short(match.group(2).decode())} overflows a float")
    return value


def parse_time_s(value: object, where: str = "time") -> float:
    """A timestamp: ISO 8601 with an offset, or POSIX seconds (a number), as UTC POSIX seconds.

    Raises:
        PayloadError: ``bad_time``.
    """
    if isinstance(value, str):
        return parse_datetime_s(value, where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(
            "bad_time", f"{where}: expected ISO 8601 text or POSIX seconds, got {_kind(value)}"
        )
    try:
        seconds = float(value)
    except OverflowError:
        raise PayloadError("bad_time", f"{where}: out of range") from None
    if not 0.0 <= seconds <= _MAX_TIME_S:  # also refuses NaN
        raise PayloadError("bad_time", f"{where}: {seconds!r} is not a POSIX time between 1970 and 9999")
    return seconds


def parse_windows(obj: object, scale: float = 1.0) -> tuple[SurplusWindow, ...]:
    """A list of ``{"start", "end", "power_w"}`` surplus windows, validated and sorted by start.

    Raises:
        PayloadError: ``bad_schema``, ``missing_field``, ``bad_time``, ``interval_order`` (end not after
            start), ``windows_overlap``, ``not_a_number``, ``not_finite``, ``negative_power`` or
            ``too_many_windows`` (more than :data:`MAX_WINDOWS`).
    """
    if not isinstance(obj, list):
        raise PayloadError("bad_schema", f"expected a list of surplus windows, got {_kind(obj)}")
    if len(obj) > MAX_WINDOWS:
        raise PayloadError("too_many_windows", f"{len(obj)} windows (limit {MAX_WINDOWS})")
    windows: list[SurplusWindow] = []
    for index, item in enumerate(obj):
        where = f"[{index}]"
        if not isinstance(item, dict):
            raise PayloadError("bad_schema", f"{where}: expected an object, got {_kind(item)}")
        for key in ("start", "end", "power_w"):
            if key not in item:
                raise PayloadError("missing_field", f"{where}.{key}")
        start_s = parse_time_s(item["start"], f"{where}.start")
        end_s = parse_time_s(item["end"], f"{where}.end")
        if end_s <= start_s:
            raise PayloadError("interval_order", f"{where}: end is not after start")
        power_w = _checked(_number(item["power_w"], f"{where}.power_w") * scale, _Sign.POWER)
        windows.append(SurplusWindow(start_s, end_s, power_w))
    windows.sort(key=lambda w: w.start_s)
    for before, after in itertools.pairwise(windows):
        if after.start_s < before.end_s:
            raise PayloadError(
                "windows_overlap", f"the window starting at {after.start_s} overlaps the one before"
            )
    return tuple(windows)


def _limited(max_payload_bytes: int, parse: Parser) -> Parser:
    def parser(payload: bytes) -> ParsedSignal:
        if len(payload) > max_payload_bytes:
            raise PayloadError("too_large", f"{len(payload)} bytes (limit {max_payload_bytes})")
        return parse(payload)

    return parser


def _reject_constant(name: str) -> Any:
    raise PayloadError("not_finite", f"{name} is not a finite number")


def _load_json(payload: bytes) -> Any:
    if not payload.strip():
        raise PayloadError("empty", "the payload is empty")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError("invalid_utf8", f"byte {err.start} is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except PayloadError:  # NaN or Infinity, from _reject_constant (PayloadError is a ValueError)
        raise
    except RecursionError:
        raise PayloadError("bad_json", "nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and ints longer than Python's digit limit
        detail = (
            f"line {err.lineno} column {err.colno}: {err.msg}"
            if isinstance(err, json.JSONDecodeError)
            else ""
        )
        raise PayloadError("bad_json", detail or "not valid JSON") from None


def _split_path(field: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for part in field.split("."):
        parts.append(int(part) if part.isdigit() and part.isascii() else part)
    return tuple(parts)


def _at_path(obj: Any, path: tuple[str | int, ...]) -> Any:
    for depth, key in enumerate(path):
        if isinstance(obj, dict):
            if str(key) not in obj:
                raise PayloadError("missing_field", _where(path, depth))
            obj = obj[str(key)]
        elif isinstance(obj, list) and isinstance(key, int):
            if key >= len(obj):
                raise PayloadError("missing_field", f"{_where(path, depth)} (the list has {len(obj)} items)")
            obj = obj[key]
        else:
            raise PayloadError("missing_field", f"{_where(path, depth)}: {_kind(obj)} has no such member")
    return obj


def _where(path: tuple[str | int, ...], depth: int) -> str:
    return ".".join(str(p) for p in path[: depth + 1])


def _number(value: object, where: str) -> float:
    if isinstance(value, float):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise PayloadError("not_finite", f"{where}: the integer is too large for a float") from None
    elif isinstance(value, str):
        match = _NUMBER_TEXT.fullmatch(value)
        if match is None:
            raise PayloadError("not_a_number", f"{where}: {_short(value)} is not a number")
        number = float(match.group(1))
    else:
        raise PayloadError("not_a_number", f"{where}: expected a number, got {_kind(value)}")
    if not math.isfinite(number):
        raise PayloadError("not_finite", f"{where}: {number!r}")
    return number


def _checked(value: float, sign: str) -> float:
    if not math.isfinite(value):  # a finite value times the scale can still overflow
        raise PayloadError("not_finite", f"{value!r} after scaling")
    if value < 0:
        if sign == _Sign.POWER:
            raise PayloadError("negative_power", f"{value!r} W is negative")
        if sign == _Sign.CARBON:
            raise PayloadError("negative_carbon", f"{value!r} gCO2/kWh is negative")
    return value + 0.0  # -0.0 -> 0.0


def _greenferry_scalar(obj: Any, scale: float, sign: str) -> ParsedSignal:
    if not isinstance(obj, dict):
        raise PayloadError("bad_schema", f'expected {{"value": ..., "time": ...}}, got {_kind(obj)}')
    if "value" not in obj:
        raise PayloadError("missing_field", "value")
    value = _checked(_number(obj["value"], "value") * scale, sign)
    time = obj.get("time")
    return ParsedSignal(value, None if time is None else parse_time_s(time))


def _forecast(obj: Any, scale: float) -> ParsedSignal:
    if isinstance(obj, dict):
        if "windows" not in obj:
            raise PayloadError("missing_field", "windows")
        time = obj.get("time")
        return ParsedSignal(
            parse_windows(obj["windows"], scale), None if time is None else parse_time_s(time)
        )
    return ParsedSignal(parse_windows(obj, scale))


def _dr(obj: Any) -> ParsedSignal:
    event = parse_dr_event(obj)
    return ParsedSignal(event, event.modified_s)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _short(text: str, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."

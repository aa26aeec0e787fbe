"""Parse and format the quantities users type: sizes, bandwidths, durations, powers, energy per byte.

Everything inside greenferry is SI: bytes, bit/s, seconds, watts, joules per byte. These helpers are the one
place where human spellings ("100 GB", "1Gbps", "2.5h", "10nJ/bit") become those numbers and back. Units are
case-sensitive where the case carries meaning: ``B`` is a byte, ``b`` a bit, ``M`` mega, ``m`` milli.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from greenferry.errors import UnitError

__all__ = [
    "BANDWIDTH_UNITS",
    "DURATION_UNITS",
    "ENERGY_UNITS",
    "POWER_UNITS",
    "SIZE_UNITS",
    "format_bandwidth",
    "format_bytes",
    "format_duration",
    "format_energy",
    "format_power",
    "parse_bandwidth_bps",
    "parse_duration_s",
    "parse_energy_per_byte_j",
    "parse_power_w",
    "parse_size_bytes",
]

# Unit -> factor to the SI base (bytes). Decimal prefixes are powers of 1000, binary ones of 1024.
SIZE_UNITS: Mapping[str, float] = {
    "B": 1.0,
    "kB": 1e3,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "PB": 1e15,
    "KiB": 1024.0,
    "MiB": 1024.0**2,
    "GiB": 1024.0**3,
    "TiB": 1024.0**4,
    "PiB": 1024.0**5,
}

# Unit -> factor to bit/s. Byte rates ("MB/s") count 8 bits per byte.
BANDWIDTH_UNITS: Mapping[str, float] = {
    "bps": 1.0,
    "kbps": 1e3,
    "Mbps": 1e6,
    "Gbps": 1e9,
    "Tbps": 1e12,
    "bit/s": 1.0,
    "kbit/s": 1e3,
    "Mbit/s": 1e6,
    "Gbit/s": 1e9,
    "Tbit/s": 1e12,
    "b/s": 1.0,
    "kb/s": 1e3,
    "Mb/s": 1e6,
    "Gb/s": 1e9,
    "Tb/s": 1e12,
    "B/s": 8.0,
    "kB/s": 8e3,
    "MB/s": 8e6,
    "GB/s": 8e9,
    "TB/s": 8e12,
}

# Unit -> factor to seconds.
DURATION_UNITS: Mapping[str, float] = {
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

# Unit -> factor to watts.
POWER_UNITS: Mapping[str, float] = {
    "mW": 1e-3,
    "W": 1.0,
    "kW": 1e3,
    "MW": 1e6,
}

# Energy unit -> factor to joules (numerator of an energy-per-amount figure).
ENERGY_UNITS: Mapping[str, float] = {
    "pJ": 1e-12,
    "nJ": 1e-9,
    "uJ": 1e-6,
    "µJ": 1e-6,
    "mJ": 1e-3,
    "J": 1.0,
    "kJ": 1e3,
    "MJ": 1e6,
    "Wh": 3600.0,
    "kWh": 3.6e6,
    "MWh": 3.6e9,
}

# Amount unit -> bytes (denominator of an energy-per-amount figure). "bit"/"b" is one eighth of a byte.
_PER_AMOUNT_BYTES: Mapping[str, float] = {
    "bit": 0.125,
    "b": 0.125,
    "kbit": 125.0,
    "Mbit": 1.25e5,
    "Gbit": 1.25e8,
    **SIZE_UNITS,
}

# A non-negative or negative decimal number (exponent allowed), or a spelled-out nan/inf so that we can
# reject those with a clear message instead of "unknown unit 'nan GB'".
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?i:nan|inf(?:inity)?)"
_QUANTITY_RE = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*(?P<unit>.*?)\s*$")
_DURATION_TERM = r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|min|sec|s|h|d)"
_DURATION_TERM_RE = re.compile(_DURATION_TERM)
_DURATION_COMPOUND_RE = re.compile(rf"(?:{_DURATION_TERM}\s*)+")


def _accepted(units: Mapping[str, float]) -> str:
    return ", ".join(units)


def _split_quantity(text: str, kind: str, units: Mapping[str, float]) -> tuple[float, str]:
    """Split ``text`` into a finite, non-negative number and a unit string (not yet looked up)."""
    if not isinstance(text, str) or not text.strip():
        raise UnitError(f"empty {kind} {text!r}; write a number and a unit ({_accepted(units)})")
    match = _QUANTITY_RE.match(text)
    if match is None:
        raise UnitError(f"invalid {kind} {text!r}: expected a number followed by a unit ({_accepted(units)})")
    value = float(match.group("number"))
    unit = match.group("unit")
    if math.isnan(value) or math.isinf(value):
        raise UnitError(f"invalid {kind} {text!r}: the number must be finite")
    if value < 0:
        raise UnitError(f"invalid {kind} {text!r}: must not be negative")
    if not unit:
        raise UnitError(f"invalid {kind} {text!r}: missing unit; accepted units: {_accepted(units)}")
    return value, unit


def _lookup(text: str, kind: str, unit: str, units: Mapping[str, float], hint: str = "") -> float:
    try:
        return units[unit]
    except KeyError:
        raise UnitError(
            f"invalid {kind} {text!r}: unknown unit {unit!r}{hint}; accepted units: {_accepted(units)}"
        ) from None


def parse_size_bytes(text: str) -> float:
    """Parse a data size such as ``"100GB"``, ``"1.5 GiB"`` or ``"1.5e3MB"``.

    Args:
        text: a non-negative number followed by a unit; kB..PB are powers of 1000, KiB..PiB of 1024.
            ``B`` means byte; a lowercase ``b`` (bit) is rejected for sizes.

    Returns:
        The size in bytes.

    Raises:
        UnitError: empty text, missing or unknown unit, negative, NaN or infinite number.
    """
    value, unit = _split_quantity(text, "size", SIZE_UNITS)
    hint = ""
    if unit not in SIZE_UNITS and unit.endswith("b"):
        hint = " (sizes are in bytes: use 'B'; 'b' means bit)"
    return value * _lookup(text, "size", unit, SIZE_UNITS, hint)


def parse_bandwidth_bps(text: str) -> float:
    """Parse a bandwidth such as ``"1Gbps"``, ``"10 Gbit/s"`` or ``"125 MB/s"`` (= 1 Gbit/s).

    Args:
        text: a positive number followed by a unit; prefixes are powers of 1000.

    Returns:
        The bandwidth in bit/s (strictly positive).

    Raises:
        UnitError: empty text, missing or unknown unit, zero, negative, NaN or infinite number.
    """
    value, unit = _split_quantity(text, "bandwidth", BANDWIDTH_UNITS)
    bandwidth_bps = value * _lookup(text, "bandwidth", unit, BANDWIDTH_UNITS)
    if bandwidth_bps <= 0:
        raise UnitError(f"invalid bandwidth {text!r}: must be greater than zero")
    return bandwidth_bps


def parse_duration_s(text: str) -> float:
    """Parse a duration such as ``"30s"``, ``"2.5h"``, ``"90 min"`` or ``"1h30min"``.

    Args:
        text: one or more non-negative ``<number><unit>`` terms (units: ms, s, sec, min, h, d);
            compound terms are summed.

    Returns:
        The duration in seconds.

    Raises:
        UnitError: empty text, missing or unknown unit, negative, NaN or infinite number.
    """
    value, unit = _split_quantity(text, "duration", DURATION_UNITS)
    if unit in DURATION_UNITS:
        return value * DURATION_UNITS[unit]
    # Compound form "1h30min": every term carries its own unit and nothing may be left over.
    stripped = text.strip()
    if _DURATION_COMPOUND_RE.fullmatch(stripped):
        return sum(
            float(number) * DURATION_UNITS[term_unit]
            for number, term_unit in _DURATION_TERM_RE.findall(stripped)
        )
    return value * _lookup(text, "duration", unit, DURATION_UNITS)


def parse_power_w(text: str) -> float:
    """Parse a power such as ``"400W"``, ``"0.4 kW"`` or ``"15000mW"``.

    Returns:
        The power in watts.

    Raises:
        UnitError: empty text, missing or unknown unit, negative, NaN or infinite number.
    """
    value, unit = _split_quantity(text, "power", POWER_UNITS)
    return value * _lookup(text, "power", unit, POWER_UNITS)


def parse_energy_per_byte_j(text: str) -> float:
    """Parse a network energy intensity such as ``"10nJ/bit"`` or ``"0.06kWh/GB"``.

    Args:
        text: ``<number><energy unit>/<amount unit>``; energy units J (with p, n, u, m, k, M prefixes) or
            Wh/kWh/MWh; amount units bit/b (and kbit, Mbit, Gbit) or a byte size unit (B, kB, GB, GiB, ...).

    Returns:
        Joules per byte (10 nJ/bit = 8e-8 J/B; 0.06 kWh/GB = 2.16e-4 J/B).

    Raises:
        UnitError: malformed text, unknown units, negative, NaN or infinite number.
    """
    accepted = f"<energy>/<amount> with energy in {_accepted(ENERGY_UNITS)} and amount in bit, b, B, GB, ..."
    value, unit = _split_quantity(text, "energy per byte", {accepted: 1.0})
    energy_unit, slash, amount_unit = unit.partition("/")
    if not slash:
        raise UnitError(f"invalid energy per byte {text!r}: expected {accepted}")
    energy_j = _lookup(text, "energy per byte", energy_unit.strip(), ENERGY_UNITS)
    amount_bytes = _lookup(text, "energy per byte", amount_unit.strip(), _PER_AMOUNT_BYTES)
    return value * energy_j / amount_bytes


def _format_scaled(value: float, steps: tuple[tuple[float, str], ...], digits: int = 3) -> str:
    """Format ``value`` with the largest unit whose factor does not exceed it (3 significant digits)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    magnitude = abs(value)
    factor, unit = steps[0]
    for step_factor, step_unit in steps:
        if magnitude >= step_factor:
            factor, unit = step_factor, step_unit
    return f"{value / factor:.{digits}g} {unit}"


def format_bytes(size_bytes: float) -> str:
    """Format a size in bytes with decimal units, e.g. ``1e11 -> "100 GB"``."""
    return _format_scaled(
        size_bytes, ((1.0, "B"), (1e3, "kB"), (1e6, "MB"), (1e9, "GB"), (1e12, "TB"), (1e15, "PB"))
    )


def format_bandwidth(bandwidth_bps: float) -> str:
    """Format a bandwidth in bit/s, e.g. ``1e9 -> "1 Gbit/s"``."""
    return _format_scaled(
        bandwidth_bps,
        ((1.0, "bit/s"), (1e3, "kbit/s"), (1e6, "Mbit/s"), (1e9, "Gbit/s"), (1e12, "Tbit/s")),
    )


def format_power(power_w: float) -> str:
    """Format a power in watts, e.g. ``400.0 -> "400 W"``."""
    return _format_scaled(power_w, ((1e-3, "mW"), (1.0, "W"), (1e3, "kW"), (1e6, "MW")))


def format_energy(energy_j: float) -> str:
    """Format an energy in joules, switching to Wh/kWh/MWh above 1 Wh, e.g. ``3.6e6 -> "1 kWh"``."""
    if math.isfinite(energy_j) and abs(energy_j) < 3600.0:
        return _format_scaled(energy_j, ((1e-9, "nJ"), (1e-6, "µJ"), (1e-3, "mJ"), (1.0, "J")))
    return _format_scaled(energy_j, ((3600.0, "Wh"), (3.6e6, "kWh"), (3.6e9, "MWh")))


def format_duration(duration_s: float) -> str:
    """Format a duration for humans: ``"850 ms"``, ``"42.5 s"``, ``"13 min 20 s"``, ``"2 h 30 min"``."""
    if not math.isfinite(duration_s):
        return _format_scaled(duration_s, ((1.0, "s"),))
    if duration_s < 0:
        return "-" + format_duration(-duration_s)
    if duration_s < 1.0:
        return f"{duration_s * 1e3:.3g} ms"
    if duration_s < 59.95:
        return f"{duration_s:.3g} s"
    if duration_s < 3599.5:
        minutes, seconds = divmod(round(duration_s), 60)
        return f"{minutes} min" + (f" {seconds} s" if seconds else "")
    if duration_s < 86370.0:
        hours, minutes = divmod(round(duration_s / 60.0), 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(round(duration_s / 3600.0), 24)
    return f"{days} d" + (f" {hours} h" if hours else "")

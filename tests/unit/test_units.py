"""Unit parsing and formatting: accepted spellings, exact factors, and errors that name the text."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greenferry.core.units import (
    format_bandwidth,
    format_bytes,
    format_duration,
    format_energy,
    format_power,
    parse_bandwidth_bps,
    parse_duration_s,
    parse_energy_per_byte_j,
    parse_power_w,
    parse_size_bytes,
)
from greenferry.errors import GreenferryError, UnitError


@pytest.mark.parametrize(
    ("text", "expected_bytes"),
    [
        ("100GB", 100e9),
        ("100 GB", 100e9),
        ("1.5e3MB", 1.5e9),
        ("  2 TB ", 2e12),
        ("512B", 512.0),
        ("1kB", 1e3),
        ("1 KiB", 1024.0),
        ("1GiB", 1024.0**3),
        ("0.5TiB", 0.5 * 1024.0**4),
        ("0 B", 0.0),
        (".5GB", 0.5e9),
    ],
)
def test_parse_size_bytes(text: str, expected_bytes: float) -> None:
    assert parse_size_bytes(text) == pytest.approx(expected_bytes, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "expected_bps"),
    [
        ("1Gbps", 1e9),
        ("1 Gbit/s", 1e9),
        ("10Gb/s", 1e10),
        ("100 Mbps", 1e8),
        ("2.5e1 Gbps", 2.5e10),
        ("1Tbit/s", 1e12),
        ("125 MB/s", 1e9),  # byte rate: 8 bits per byte
    ],
)
def test_parse_bandwidth_bps(text: str, expected_bps: float) -> None:
    assert parse_bandwidth_bps(text) == pytest.approx(expected_bps, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "expected_s"),
    [
        ("30s", 30.0),
        ("2.5h", 9000.0),
        ("90 min", 5400.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1h30min", 5400.0),
        ("1h 30min 15s", 5415.0),
        ("9.5 h", 34200.0),
    ],
)
def test_parse_duration_s(text: str, expected_s: float) -> None:
    assert parse_duration_s(text) == pytest.approx(expected_s, rel=1e-12)


def test_parse_power_and_network_energy() -> None:
    assert parse_power_w("400W") == 400.0
    assert parse_power_w("0.4 kW") == pytest.approx(400.0)
    # 10 nJ/bit is 80 nJ per byte; the 2015 Internet average 0.06 kWh/GB is 0.06 * 3.6e6 J / 1e9 B.
    assert parse_energy_per_byte_j("10nJ/bit") == pytest.approx(8e-8)
    assert parse_energy_per_byte_j("0.06kWh/GB") == pytest.approx(2.16e-4)
    assert parse_energy_per_byte_j("80 nJ/B") == pytest.approx(8e-8)


@pytest.mark.parametrize(
    ("parse", "text", "needle"),
    [
        (parse_size_bytes, "100", "missing unit"),
        (parse_size_bytes, "", "empty"),
        (parse_size_bytes, "   ", "empty"),
        (parse_size_bytes, "nan GB", "finite"),
        (parse_size_bytes, "inf GB", "finite"),
        (parse_size_bytes, "-1GB", "negative"),
        (parse_size_bytes, "100Gb", "'b' means bit"),
        (parse_size_bytes, "1 XB", "unknown unit 'XB'"),
        (parse_size_bytes, "GB", "expected a number"),
        (parse_size_bytes, "1,5GB", "unknown unit"),
        (parse_bandwidth_bps, "1Gbq", "unknown unit 'Gbq'"),
        (parse_bandwidth_bps, "100", "missing unit"),
        (parse_bandwidth_bps, "0 Gbps", "greater than zero"),
        (parse_bandwidth_bps, "-5 Mbps", "negative"),
        (parse_duration_s, "-1h", "negative"),
        (parse_duration_s, "100", "missing unit"),
        (parse_duration_s, "1h30", "unknown unit"),
        (parse_duration_s, "NaN h", "finite"),
        (parse_power_w, "400", "missing unit"),
        (parse_energy_per_byte_j, "10nJ", "expected"),
        (parse_energy_per_byte_j, "10nJ/parsec", "unknown unit 'parsec'"),
    ],
)
def test_bad_quantities_raise_unit_error_naming_the_text(parse: object, text: str, needle: str) -> None:
    assert callable(parse)
    with pytest.raises(UnitError) as excinfo:
        parse(text)
    message = str(excinfo.value)
    assert repr(text) in message
    assert needle in message
    assert isinstance(excinfo.value, GreenferryError)


def test_unit_error_lists_accepted_units() -> None:
    with pytest.raises(UnitError, match=r"accepted units: .*Gbps.*Gbit/s"):
        parse_bandwidth_bps("1 Gbq")
    with pytest.raises(UnitError, match=r"accepted units: .*GiB"):
        parse_size_bytes("100")


def test_formatters() -> None:
    assert format_bytes(100e9) == "100 GB"
    assert format_bytes(94.5e9) == "94.5 GB"
    assert format_bytes(512.0) == "512 B"
    assert format_bandwidth(1e9) == "1 Gbit/s"
    assert format_bandwidth(1.058e9) == "1.06 Gbit/s"
    assert format_bandwidth(math.inf) == "inf"
    assert format_duration(0.25) == "250 ms"
    assert format_duration(42.5) == "42.5 s"
    assert format_duration(800.0) == "13 min 20 s"
    assert format_duration(900.0) == "15 min"
    assert format_duration(9000.0) == "2 h 30 min"
    assert format_duration(54000.0) == "15 h"
    assert format_duration(129600.0) == "1 d 12 h"
    assert format_duration(-48.9) == "-48.9 s"
    assert format_power(400.0) == "400 W"
    assert format_energy(3.6e6) == "1 kWh"
    assert format_energy(12.0) == "12 J"


@given(st.floats(min_value=1.0, max_value=1e15, allow_nan=False))
def test_format_then_parse_round_trips_sizes(size_bytes: float) -> None:
    # Three significant digits survive the round trip.
    assert parse_size_bytes(format_bytes(size_bytes)) == pytest.approx(size_bytes, rel=5e-3)


@given(st.floats(min_value=1.0, max_value=1e13, allow_nan=False))
def test_format_then_parse_round_trips_bandwidths(bandwidth_bps: float) -> None:
    assert parse_bandwidth_bps(format_bandwidth(bandwidth_bps)) == pytest.approx(bandwidth_bps, rel=5e-3)


@given(st.floats(min_value=1.0, max_value=30 * 86400.0, allow_nan=False))
def test_format_then_parse_round_trips_durations(duration_s: float) -> None:
    text = format_duration(duration_s).replace(" ", "")
    # Rounded to the smaller unit shown (s below an hour, min below a day, h above).
    tolerance_s = 0.5 if duration_s < 3600 else (30.0 if duration_s < 86400 else 1800.0)
    assert abs(parse_duration_s(text) - duration_s) <= max(tolerance_s, duration_s * 5e-3)

"""Trace loaders on the shipped data and on the development data set, plus resample/shift/windows."""

from __future__ import annotations

import gzip
import hashlib
import logging
from datetime import UTC, datetime

import numpy as np
import pytest
from worlds import shared_file

from greenferry.errors import TraceError
from greenferry.sim import traces
from greenferry.sim.traces import (
    Trace,
    data_path,
    load_caiso_curtailment,
    load_electricitymaps_carbon,
    load_open_meteo,
    load_price,
    load_psm3,
    load_pvgis_tmy,
    load_solcast_actual,
    load_solcast_forecast,
    load_tmy3,
    resample,
    shift,
    window_lengths_s,
)

ZONES = ("AU-NSW", "DE-LU", "IN-WE", "JP-TK", "US-CAL-CISO", "US-NY-NYIS", "US-TEX-ERCO", "ZA")
PRICES = ("price", "prices_2022_hourly_utc_converted.csv")


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


# --- shipped data -----------------------------------------------------------------------------


def test_every_shipped_file_matches_its_checksum_and_is_listed() -> None:
    sums_path = data_path("SHA256SUMS")
    listed = {}
    for line in sums_path.read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    shipped = {
        str(p.relative_to(traces.DATA_DIR))
        for p in traces.DATA_DIR.rglob("*")
        if p.is_file() and p.name not in ("README.md", "SHA256SUMS")
    }
    assert shipped == set(listed)
    assert len(shipped) == 21
    for name, digest in listed.items():
        assert hashlib.sha256(gzip.decompress(data_path(name).read_bytes())).hexdigest() == digest, name


def test_no_file_without_an_open_licence_is_shipped() -> None:
    names = " ".join(str(p).lower() for p in traces.DATA_DIR.rglob("*"))
    for forbidden in (
        "solcast",
        "watttime",
        "opsd",
        "windpowerlib",
        "ger_ci",
        "gb_ci",
        "fr_ci",
        "price",
        "weather.csv",
    ):
        assert forbidden not in names


def test_data_path_rejects_unknown_and_escaping_names() -> None:
    with pytest.raises(FileNotFoundError, match=r"open-meteo/US-CAL-CISO/2022\.json\.gz"):
        data_path("nope.csv")
    with pytest.raises(ValueError, match="relative"):
        data_path("..", "sim", "traces.py")


@pytest.mark.parametrize("zone", ZONES)
def test_open_meteo_shipped_zone_is_a_full_hourly_year(zone: str) -> None:
    wind = load_open_meteo(data_path("open-meteo", zone, "2022.json.gz"), "windspeed_10m")
    cloud = load_open_meteo(data_path("open-meteo", zone, "2022.json.gz"), "cloudcover")
    assert len(wind) == 8760
    assert wind.step_s == 3600
    assert wind.unit == "m/s"
    assert cloud.unit == "%"
    assert cloud.values.min() >= 0
    assert cloud.values.max() <= 100
    assert np.array_equal(wind.times_s, cloud.times_s)


def test_open_meteo_converts_fixed_offset_labels_and_km_per_h() -> None:
    path = data_path("open-meteo", "US-CAL-CISO", "2022.json.gz")
    wind = load_open_meteo(path, "windspeed_10m")
    # The response carries utc_offset_seconds = -25200 for the whole year (Open-Meteo applies the
    # offset valid at request time and ignores daylight saving): label 2022-01-01T00:00 -> 07:00Z.
    assert wind.times_s[0] == utc("2022-01-01T07:00:00")
    assert wind.times_s[-1] == utc("2023-01-01T06:00:00")
    assert wind.values[0] == pytest.approx(5.0 / 3.6)  # file: 5.0 km/h
    temperature = load_open_meteo(path, "temperature_2m")
    assert temperature.unit == "degC"
    assert temperature.values[0] == pytest.approx(5.9)
    berlin = load_open_meteo(data_path("open-meteo", "DE-LU", "2022.json.gz"), "windspeed_10m")
    assert berlin.times_s[0] == utc("2021-12-31T23:00:00")  # offset +3600


@pytest.mark.parametrize("zone", ZONES)
def test_electricitymaps_shipped_zone(zone: str) -> None:
    carbon = load_electricitymaps_carbon(data_path("electricitymaps", f"{zone}_2022_hourly.csv.gz"))
    assert len(carbon) == 8760
    assert carbon.unit == "gCO2/kWh"
    assert carbon.times_s[0] == utc("2022-01-01T00:00:00")
    assert carbon.times_s[-1] == utc("2022-12-31T23:00:00")
    assert carbon.values.min() > 0


def test_electricitymaps_uses_lifecycle_by_default_and_direct_on_request() -> None:
    path = data_path("electricitymaps", "US-CAL-CISO_2022_hourly.csv.gz")
    lca = load_electricitymaps_carbon(path)
    direct = load_electricitymaps_carbon(path, basis="direct")
    assert lca.values[0] == pytest.approx(273.77)
    assert direct.values[0] == pytest.approx(209.52)
    assert lca.values.mean() == pytest.approx(262, abs=0.5)  # the data README's 2022 mean LCA
    assert np.all(lca.values >= direct.values)
    assert "US-CAL-CISO" in lca.name


def test_caiso_curtailment_weeks() -> None:
    week = load_caiso_curtailment(data_path("caiso-curtailment", "vector_high_curtailment_week.csv.gz"))
    assert len(week) == 168
    assert week.unit == "W"
    assert week.times_s[0] == utc("2024-04-01T08:00:00")
    assert week.values.max() > 1e9  # GW-scale curtailment in April, stored in W
    lmp = load_caiso_curtailment(
        data_path("caiso-curtailment", "vector_high_volatility_week.csv.gz"), "LMP_NP15"
    )
    assert lmp.unit == "USD/MWh"
    assert lmp.times_s[0] == utc("2024-01-15T08:00:00")
    assert lmp.values[0] == pytest.approx(204.88927)


def test_psm3_shipped_file() -> None:
    ghi = load_psm3(data_path("nsrdb", "test_read_psm3.csv.gz"))
    assert len(ghi) == 17520
    assert ghi.step_s == 1800
    assert ghi.unit == "W/m2"
    assert ghi.times_s[0] == utc("2017-01-01T07:00:00")  # local standard time UTC-7
    wind = load_psm3(data_path("nsrdb", "test_read_psm3.csv.gz"), "Wind Speed")
    assert wind.unit == "m/s"
    assert wind.values[:2] == pytest.approx([0.3, 0.6])
    # Irradiance is 0 at local midnight and peaks around local solar noon (~12:14 at 108.5 W).
    local_hour = ((ghi.times_s - 7 * 3600) % 86400) / 3600
    assert np.all(ghi.values[local_hour == 0] == 0)
    noon = ghi.values.reshape(365, 48).mean(axis=0).argmax() / 2
    assert 11.5 <= noon <= 13


def test_pvgis_shipped_file() -> None:
    ghi = load_pvgis_tmy(data_path("pvgis", "tmy_45.000_8.000_2005_2023.csv.gz"))
    assert len(ghi) == 8760
    assert ghi.times_s[0] == utc("2022-01-01T00:00:00")
    assert ghi.times_s[-1] == utc("2022-12-31T23:00:00")
    assert ghi.unit == "W/m2"
    assert ghi.values.max() == pytest.approx(971.0)
    t2m = load_pvgis_tmy(data_path("pvgis", "tmy_45.000_8.000_2005_2023.csv.gz"), "T2m", year=2021)
    assert t2m.times_s[0] == utc("2021-01-01T00:00:00")
    assert t2m.values[0] == pytest.approx(2.04)
    with pytest.raises(ValueError, match="leap"):
        load_pvgis_tmy(data_path("pvgis", "tmy_45.000_8.000_2005_2023.csv.gz"), year=2024)


# --- development data set (not shipped) -----------------------------------------------------


def test_solcast_actual_period_end_becomes_start() -> None:
    path = shared_file("solar", "vessim_solcast2022_global", "solcast2022_global_actual.csv")
    sf = load_solcast_actual(path, "San Francisco")
    assert len(sf) == 8352
    assert sf.unit == "fraction"
    assert sf.step_s == 300
    assert sf.times_s[0] == utc("2022-06-08T00:00:00")  # file: period ending 00:05
    assert sf.times_s[-1] == utc("2022-07-06T23:55:00")
    assert sf.values[0] == pytest.approx(0.298997)
    assert sf.values.min() >= 0
    assert sf.values.max() <= 1


def test_solcast_forecast_table(caplog: pytest.LogCaptureFixture) -> None:
    path = shared_file("solar", "vessim_solcast2022_global", "solcast2022_global_forecast.csv.gz")
    sf = load_solcast_forecast(path, "San Francisco")
    assert len(sf) == 107_341
    assert sf.target_step_s == 300
    assert sf.issue_times_s[0] == utc("2022-06-08T00:00:00")
    assert sf.target_start_s[0] == utc("2022-06-08T00:00:00")  # period_end 00:05 -> start 00:00
    assert sorted(set(sf.lead_times_s.tolist())) == list(range(0, 3601, 300))
    assert sf.values[0] == pytest.approx(0.344807)
    with caplog.at_level(logging.WARNING, logger="greenferry.sim.traces"):
        mumbai = load_solcast_forecast(path, "Mumbai")
    assert len(mumbai) == 107_341 - 11
    assert "dropped 11 empty forecast point(s)" in caplog.text
    assert "row 52977" in caplog.text


def test_tmy3_end_of_hour_local_standard_time() -> None:
    ghi = load_tmy3(shared_file("solar", "pvlib_tmy3_greensboro", "723170TYA.CSV"))
    assert len(ghi) == 8760
    assert ghi.unit == "W/m2"
    # 01/01 01:00 (end of hour, UTC-5) -> interval 00:00-01:00 local -> 05:00Z
    assert ghi.times_s[0] == utc("2022-01-01T05:00:00")
    assert ghi.times_s[-1] == utc("2023-01-01T04:00:00")  # 12/31 24:00 local
    wind = load_tmy3(shared_file("solar", "pvlib_tmy3_sand_point", "703165TY.csv"), "Wspd")
    assert wind.unit == "m/s"
    assert wind.times_s[0] == utc("2022-01-01T09:00:00")  # UTC-9
    assert wind.values[0] == pytest.approx(2.1)
    pressure = load_tmy3(shared_file("solar", "pvlib_tmy3_greensboro", "723170TYA.CSV"), "Pressure (mbar)")
    assert pressure.unit == "Pa"
    assert pressure.values[0] == pytest.approx(99_300)


def test_shipped_psm3_equals_the_development_copy() -> None:
    original = load_psm3(shared_file("solar", "pvlib_nsrdb_psm3_2017", "test_read_psm3.csv"))
    shipped = load_psm3(data_path("nsrdb", "test_read_psm3.csv.gz"))
    assert np.array_equal(original.times_s, shipped.times_s)
    assert np.array_equal(original.values, shipped.values)


def test_price_columns_units_and_coverage() -> None:
    path = shared_file(*PRICES)
    caiso = load_price(path, "US-CAL-CISO_USD_per_MWh")
    assert caiso.unit == "USD/MWh"
    assert len(caiso) == 8784
    assert caiso.times_s[0] == utc("2021-12-31T08:00:00")
    assert caiso.values[0] == pytest.approx(60.69364)
    assert caiso.values.min() < 0  # negative prices are real and allowed
    australia = load_price(path, "AU-NSW_AUD_per_MWh")
    assert australia.unit == "AUD/MWh"
    assert australia.times_s[0] == utc("2021-12-31T14:00:00")  # leading empty rows are outside coverage


def test_price_long_hole_is_an_error_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    path = shared_file(*PRICES)
    with pytest.raises(TraceError, match=r"row 5896, column 'DE-LU_EUR_per_MWh': 24 consecutive missing"):
        load_price(path, "DE-LU_EUR_per_MWh")
    with caplog.at_level(logging.WARNING, logger="greenferry.sim.traces"):
        germany = load_price(path, "DE-LU_EUR_per_MWh", max_gap_steps=24)
    assert len(germany) == 8760
    assert "interpolated 25 missing value(s)" in caplog.text
    india_path = shared_file("price", "prices_IN-WE_2022_hourly_utc_converted.csv")
    with pytest.raises(TraceError, match=r"20 missing timestamp\(s\) from 2022-05-30T22:30:00Z"):
        load_price(india_path, "IN-WE_INR_per_MWh")
    india = load_price(india_path, "IN-WE_INR_per_MWh", max_gap_steps=24)
    assert india.unit == "INR/MWh"
    assert np.all(india.times_s % 3600 == 1800)  # IST hours fall on :30 UTC


# --- resample, shift, windows ---------------------------------------------------------------


def hourly(values: list[float], start: str = "2022-01-01T00:00:00") -> Trace:
    t0 = utc(start)
    return Trace("t", t0 + 3600 * np.arange(len(values)), np.asarray(values, dtype=float), "W", "test")


def test_resample_methods_on_a_small_trace() -> None:
    trace = hourly([0.0, 10.0, 20.0])
    t0 = trace.start_s
    assert resample(trace, t0, 1800, 6, method="hold").tolist() == [0, 0, 10, 10, 20, 20]
    assert resample(trace, t0, 1800, 6, method="linear").tolist() == [0, 5, 10, 15, 20, 20]
    assert resample(trace, t0, 1800, 6, method="mean").tolist() == [0, 0, 10, 10, 20, 20]
    assert resample(trace, t0 + 1800, 3600, 2).tolist() == [5, 15]
    assert resample(trace, t0, 10800, 1).tolist() == [10]
    assert resample(trace, t0, 60, 0).size == 0


def test_resample_says_which_part_is_missing() -> None:
    trace = hourly([1.0, 2.0, 3.0])
    with pytest.raises(TraceError, match=r"before the trace: 2021-12-31T23:00:00Z\.\.2022-01-01T00:00:00Z"):
        resample(trace, trace.start_s - 3600, 3600, 2)
    with pytest.raises(
        TraceError, match=r"ends after the trace: 2022-01-01T03:00:00Z\.\.2022-01-01T04:00:00Z"
    ):
        resample(trace, trace.start_s, 3600, 4)
    holey = Trace("h", np.array([0, 3600, 4 * 3600, 5 * 3600]), np.ones(4), "W", "holey.csv")
    with pytest.raises(TraceError, match=r"holey\.csv: .*hole.*1970-01-01T02:00:00Z\.\.1970-01-01T04:00:00Z"):
        resample(holey, 0, 600, 30)
    assert resample(holey, 4 * 3600, 600, 12).tolist() == [1.0] * 12
    with pytest.raises(ValueError, match="step_s"):
        resample(trace, trace.start_s, 0, 1)


def test_resample_a_year_at_five_minutes() -> None:
    ghi = load_pvgis_tmy(data_path("pvgis", "tmy_45.000_8.000_2005_2023.csv.gz"))
    n_steps = 365 * 288
    for method in ("mean", "hold", "linear"):
        out = resample(ghi, ghi.start_s, 300, n_steps, method=method)
        assert out.shape == (n_steps,)
    mean = resample(ghi, ghi.start_s, 300, n_steps, method="mean")
    assert mean.sum() * 300 == pytest.approx(ghi.values.sum() * 3600)


def test_shift_moves_times_only() -> None:
    trace = hourly([1.0, 2.0])
    moved = shift(trace, -240 * 15)
    assert moved.times_s.tolist() == (trace.times_s - 3600).tolist()
    assert moved.values.tolist() == [1.0, 2.0]
    assert moved.unit == trace.unit


def test_trace_is_immutable_and_validated() -> None:
    trace = hourly([1.0, 2.0])
    with pytest.raises(ValueError, match="read-only"):
        trace.values[0] = 5.0
    with pytest.raises(ValueError, match="strictly increasing"):
        Trace("x", np.array([0, 0]), np.ones(2), "W", "x")
    with pytest.raises(ValueError, match="unknown unit"):
        Trace("x", np.array([0, 1]), np.ones(2), "kW", "x")
    assert Trace("x", np.array([0, 1]), np.ones(2), "EUR/MWh", "x").unit == "EUR/MWh"


def test_window_lengths() -> None:
    assert window_lengths_s([True, True, False, True], 300).tolist() == [600.0, 300.0]
    assert window_lengths_s(np.zeros(5, dtype=bool), 60).size == 0
    assert window_lengths_s(np.ones(4, dtype=bool), 3600).tolist() == [14400.0]
    assert window_lengths_s([], 60).size == 0
    with pytest.raises(ValueError, match="1-D"):
        window_lengths_s(np.ones((2, 2), dtype=bool), 60)

"""Clear-sky, cloud, PV and wind models against known physical facts."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from greenferry.sim.renewables import (
    clear_sky_ghi_w_m2,
    ghi_from_cloud_cover,
    hub_height_speed_m_s,
    pv_power_fraction,
    solar_position,
    wind_power_fraction,
)

SAN_JOSE = (37.434, -121.955)  # the Open-Meteo US-CAL-CISO grid point
SYDNEY = (-33.849, 151.196)


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def one_day_minutes(start_utc: str) -> np.ndarray:
    return utc(start_utc) + 60 * np.arange(24 * 60)


@pytest.mark.parametrize(
    ("lat_lon", "local_midnight_utc", "day_start_utc"),
    [
        (SAN_JOSE, "2022-06-21T08:00:00", "2022-06-21T00:00:00"),  # PST midnight = 08:00Z
        (SAN_JOSE, "2022-12-21T08:00:00", "2022-12-21T00:00:00"),
        (SYDNEY, "2022-06-20T14:00:00", "2022-06-21T00:00:00"),  # AEST midnight = 14:00Z
    ],
)
def test_clear_sky_is_zero_at_local_midnight_and_peaks_at_solar_noon(
    lat_lon: tuple[float, float], local_midnight_utc: str, day_start_utc: str
) -> None:
    lat, lon = lat_lon
    assert clear_sky_ghi_w_m2(np.array([utc(local_midnight_utc)]), lat, lon)[0] == 0.0
    times = one_day_minutes(day_start_utc)
    ghi = clear_sky_ghi_w_m2(times, lat, lon)
    peak_hour_utc = ((times[ghi.argmax()] - utc(day_start_utc)) / 3600.0) % 24
    solar_noon_utc = (12.0 - lon / 15.0) % 24  # within the equation of time (< 17 min)
    assert abs(peak_hour_utc - solar_noon_utc) < 0.3
    assert np.all(ghi >= 0)
    assert np.sum(ghi == 0) > 60 * 8  # at least 8 hours of night at these latitudes


def test_clear_sky_magnitudes() -> None:
    summer = clear_sky_ghi_w_m2(one_day_minutes("2022-06-21T00:00:00"), *SAN_JOSE)
    winter = clear_sky_ghi_w_m2(one_day_minutes("2022-12-21T00:00:00"), *SAN_JOSE)
    assert 950 < summer.max() < 1050  # zenith ~14 degrees: 1098 cos z exp(-0.059/cos z)
    assert 450 < winter.max() < 650  # zenith ~61 degrees
    assert summer.sum() > 2 * winter.sum()


def test_solar_zenith_at_the_solstice() -> None:
    # Noon sun is overhead at the Tropic of Cancer on the June solstice.
    times = one_day_minutes("2022-06-21T00:00:00")
    zenith_deg, hour_angle_deg = solar_position(times, 23.44, 0.0)
    assert zenith_deg.min() < 0.6
    assert abs(hour_angle_deg[zenith_deg.argmin()]) < 0.5
    assert zenith_deg.max() == pytest.approx(180 - 2 * 23.44, abs=0.6)


def test_kasten_czeplak() -> None:
    clear = np.array([0.0, 500.0, 1000.0])
    assert ghi_from_cloud_cover(clear, 0.0).tolist() == clear.tolist()
    assert ghi_from_cloud_cover(clear, 100.0) == pytest.approx(0.25 * clear)
    assert ghi_from_cloud_cover(1000.0, 50.0) == pytest.approx(1000 * (1 - 0.75 * 0.5**3.4))
    with pytest.raises(ValueError, match="cloud_pct"):
        ghi_from_cloud_cover(clear, 101.0)
    with pytest.raises(ValueError, match="cloud_pct"):
        ghi_from_cloud_cover(clear, np.nan)


def test_pv_power_fraction() -> None:
    assert pv_power_fraction([0.0, 500.0, 1000.0]).tolist() == pytest.approx([0.0, 0.425, 0.85])
    assert pv_power_fraction(2000.0) == 1.0  # clipped
    hot = pv_power_fraction(1000.0, 35.0)
    cold = pv_power_fraction(1000.0, -10.0)
    assert hot < 0.85 < cold
    # NOCT: T_cell = 35 + 25/800*1000 = 66.25 degC -> 1 - 0.004*41.25
    assert hot == pytest.approx(0.85 * (1 - 0.004 * 41.25))


def test_wind_power_curve_at_the_corners() -> None:
    same_height = {"measured_height_m": 100.0, "hub_height_m": 100.0}
    speeds = np.array([0.0, 2.99, 3.0, 7.5, 12.0, 20.0, 25.0, 25.01, 40.0])
    fraction = wind_power_fraction(speeds, **same_height)
    expected_mid = (7.5**3 - 27) / (12**3 - 27)
    assert fraction.tolist() == pytest.approx([0, 0, 0, expected_mid, 1, 1, 1, 0, 0])
    ramp = wind_power_fraction(np.linspace(3, 12, 50), **same_height)
    assert np.all(np.diff(ramp) > 0)


def test_wind_shear_to_hub_height() -> None:
    assert hub_height_speed_m_s(10.0) == pytest.approx(10 * 10 ** (1 / 7))
    # 9 m/s at 10 m is ~12.5 m/s at 100 m: above rated.
    assert wind_power_fraction(9.0) == 1.0
    assert wind_power_fraction(2.0) == 0.0  # 2.78 m/s at hub: below cut-in
    with pytest.raises(ValueError, match="cut_in"):
        wind_power_fraction(5.0, cut_in=12, rated=3)
    with pytest.raises(ValueError, match=">= 0"):
        wind_power_fraction(-1.0)

"""Simple renewable-generation models that turn weather traces into power fractions (pure numpy, no I/O).

Models and sources:

* Solar position: the NOAA Global Monitoring Division "General Solar Position Calculations"
  approximation (fractional-year Fourier series for the equation of time and the declination,
  after Spencer, "Fourier series representation of the position of the sun", Search 2(5), 1971).
  Zenith error is well under 1 degree, ample for hourly energy modelling.
* Clear-sky global horizontal irradiance (GHI): Haurwitz, "Insolation in relation to cloud type",
  J. Meteorology 3, 1946 (the model usually cited as Haurwitz 1945):
  ``GHI_cs = 1098 * cos(z) * exp(-0.059 / cos(z))`` W/m2 for a solar zenith ``z`` below 90 degrees.
* Cloud attenuation: Kasten & Czeplak, "Solar and terrestrial radiation dependent on the amount
  and type of cloud", Solar Energy 24, 1980: ``GHI = GHI_cs * (1 - 0.75 * (c / 100) ** 3.4)``
  for total cloud cover ``c`` in percent (so full overcast leaves 25 % of clear sky).
* PV output: ``GHI / 1000 W/m2 * performance ratio`` (default 0.85), optionally derated for
  cell temperature with the NOCT model (``T_cell = T_air + (NOCT - 20) / 800 * GHI``) and a
  power temperature coefficient (default -0.4 %/K, typical crystalline silicon), clipped to [0, 1].
* Wind output: hub-height speed from the power-law shear profile
  ``v_hub = v * (h_hub / h_measured) ** alpha`` (alpha = 1/7, the open-terrain default), then a
  generic turbine curve: 0 below cut-in, ``(v^3 - v_in^3) / (v_rated^3 - v_in^3)`` up to rated,
  1 up to and including cut-out, 0 above (storm shutdown).

All functions take and return numpy arrays (scalars broadcast) and are vectorised.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

SOLAR_CONSTANT_HAURWITZ_W_M2 = 1098.0
"""The Haurwitz model's scale factor, W/m2."""

STC_IRRADIANCE_W_M2 = 1000.0
"""Standard test condition irradiance at which a PV module delivers its rated (peak) power, W/m2."""

_DAY_S = 86_400
_PCT_TOLERANCE = 1e-6


def _day_of_year_and_hour(times_s: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Day of year (1-based), UTC hour of day (fractional) and days in that year, per UTC epoch second."""
    seconds = np.asarray(times_s, dtype=np.int64)
    as_datetime = seconds.astype("datetime64[s]")
    year_start = as_datetime.astype("datetime64[Y]")
    days_since_year_start = (as_datetime.astype("datetime64[D]") - year_start.astype("datetime64[D]")).astype(
        np.int64
    )
    next_year_start = (year_start + np.timedelta64(1, "Y")).astype("datetime64[D]")
    days_in_year = (next_year_start - year_start.astype("datetime64[D]")).astype(np.float64)
    hour_utc = np.mod(seconds, _DAY_S).astype(np.float64) / 3600.0
    return (days_since_year_start + 1).astype(np.float64), hour_utc, days_in_year


def solar_position(times_s: npt.ArrayLike, lat_deg: float, lon_deg: float) -> tuple[FloatArray, FloatArray]:
    """Solar zenith and hour angle (NOAA/Spencer approximation) at UTC instants.

    Args:
        times_s: UTC epoch seconds (instants, not interval starts: pass the midpoint for an interval mean).
        lat_deg: latitude, degrees north.
        lon_deg: longitude, degrees east.

    Returns:
        ``(zenith_deg, hour_angle_deg)``: zenith 0 = sun overhead, > 90 = below the horizon; hour angle
        0 at local solar noon, negative in the morning.
    """
    day_of_year, hour_utc, days_in_year = _day_of_year_and_hour(times_s)
    gamma = 2.0 * np.pi / days_in_year * (day_of_year - 1.0 + (hour_utc - 12.0) / 24.0)
    equation_of_time_min = 229.18 * (
        0.000075
        + 0.001868 * np.cos(gamma)
        - 0.032077 * np.sin(gamma)
        - 0.014615 * np.cos(2 * gamma)
        - 0.040849 * np.sin(2 * gamma)
    )
    declination_rad = (
        0.006918
        - 0.399912 * np.cos(gamma)
        + 0.070257 * np.sin(gamma)
        - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma)
        - 0.002697 * np.cos(3 * gamma)
        + 0.00148 * np.sin(3 * gamma)
    )
    true_solar_time_min = hour_utc * 60.0 + equation_of_time_min + 4.0 * lon_deg
    hour_angle_deg = np.mod(true_solar_time_min / 4.0, 360.0) - 180.0
    lat_rad = np.radians(lat_deg)
    cos_zenith = np.sin(lat_rad) * np.sin(declination_rad) + np.cos(lat_rad) * np.cos(
        declination_rad
    ) * np.cos(np.radians(hour_angle_deg))
    zenith_deg: FloatArray = np.degrees(np.arccos(np.clip(cos_zenith, -1.0, 1.0)))
    return zenith_deg, hour_angle_deg.astype(np.float64)


def clear_sky_ghi_w_m2(times_s: npt.ArrayLike, lat_deg: float, lon_deg: float) -> FloatArray:
    """Haurwitz clear-sky global horizontal irradiance, W/m2; 0 when the sun is below the horizon.

    Args:
        times_s: UTC epoch seconds (instants).
        lat_deg: latitude, degrees north.
        lon_deg: longitude, degrees east.
    """
    zenith_deg, _ = solar_position(times_s, lat_deg, lon_deg)
    cos_zenith = np.cos(np.radians(zenith_deg))
    daylight = cos_zenith > 0.0
    safe_cos = np.where(daylight, cos_zenith, 1.0)
    ghi = SOLAR_CONSTANT_HAURWITZ_W_M2 * safe_cos * np.exp(-0.059 / safe_cos)
    result: FloatArray = np.where(daylight, ghi, 0.0).astype(np.float64)
    return result


def ghi_from_cloud_cover(clear_ghi_w_m2: npt.ArrayLike, cloud_pct: npt.ArrayLike) -> FloatArray:
    """Kasten–Czeplak all-sky GHI from clear-sky GHI and total cloud cover, W/m2.

    Args:
        clear_ghi_w_m2: clear-sky GHI, W/m2 (>= 0).
        cloud_pct: total cloud cover, percent in [0, 100].

    Raises:
        ValueError: cloud cover outside [0, 100] or not finite, or negative clear-sky GHI.
    """
    clear = np.asarray(clear_ghi_w_m2, dtype=np.float64)
    cloud = np.asarray(cloud_pct, dtype=np.float64)
    if not np.all(np.isfinite(cloud)) or np.any((cloud < -_PCT_TOLERANCE) | (cloud > 100.0 + _PCT_TOLERANCE)):
        raise ValueError("cloud_pct must be finite and within [0, 100]")
    cloud = np.clip(cloud, 0.0, 100.0)  # absorbs interpolation round-off only
    if not np.all(np.isfinite(clear)) or np.any(clear < 0.0):
        raise ValueError("clear_ghi_w_m2 must be finite and >= 0")
    result: FloatArray = clear * (1.0 - 0.75 * (cloud / 100.0) ** 3.4)
    return result


def pv_power_fraction(
    ghi_w_m2: npt.ArrayLike,
    temp_c: npt.ArrayLike | None = None,
    *,
    performance_ratio: float = 0.85,
    temp_coeff_per_k: float = -0.004,
    noct_c: float = 45.0,
) -> FloatArray:
    """PV output as a fraction of the array's peak (STC) power, in [0, 1].

    ``fraction = GHI / 1000 * performance_ratio``; with ``temp_c`` (air temperature, degC) it is
    further multiplied by ``1 + temp_coeff_per_k * (T_cell - 25)`` with the NOCT cell temperature
    ``T_cell = temp_c + (noct_c - 20) / 800 * GHI``. Horizontal plane, no tracking.

    Args:
        ghi_w_m2: global horizontal irradiance, W/m2.
        temp_c: optional air temperature, degC (broadcast against ``ghi_w_m2``).
        performance_ratio: system losses (inverter, wiring, soiling, mismatch), 0-1.
        temp_coeff_per_k: relative power change per kelvin of cell temperature above 25 degC.
        noct_c: nominal operating cell temperature, degC.
    """
    ghi = np.asarray(ghi_w_m2, dtype=np.float64)
    fraction = ghi / STC_IRRADIANCE_W_M2 * performance_ratio
    if temp_c is not None:
        cell_c = np.asarray(temp_c, dtype=np.float64) + (noct_c - 20.0) / 800.0 * ghi
        fraction = fraction * (1.0 + temp_coeff_per_k * (cell_c - 25.0))
    result: FloatArray = np.clip(fraction, 0.0, 1.0)
    return result


def hub_height_speed_m_s(
    speed_m_s: npt.ArrayLike,
    measured_height_m: float = 10.0,
    hub_height_m: float = 100.0,
    shear_exponent: float = 1.0 / 7.0,
) -> FloatArray:
    """Wind speed extrapolated to hub height with the power-law shear profile, m/s."""
    if measured_height_m <= 0 or hub_height_m <= 0:
        raise ValueError("heights must be > 0 m")
    speed = np.asarray(speed_m_s, dtype=np.float64)
    result: FloatArray = speed * (hub_height_m / measured_height_m) ** shear_exponent
    return result


def wind_power_fraction(
    speed_m_s: npt.ArrayLike,
    *,
    measured_height_m: float = 10.0,
    hub_height_m: float = 100.0,
    shear_exponent: float = 1.0 / 7.0,
    cut_in: float = 3.0,
    rated: float = 12.0,
    cut_out: float = 25.0,
) -> FloatArray:
    """Turbine output as a fraction of rated power, in [0, 1], from a measured wind speed.

    The speed measured at ``measured_height_m`` is first extrapolated to ``hub_height_m``. Then:
    0 below ``cut_in``; ``(v^3 - cut_in^3) / (rated^3 - cut_in^3)`` between cut-in and rated;
    1 from rated up to and including ``cut_out``; 0 above (storm shutdown). Speeds in m/s.

    Raises:
        ValueError: unless ``0 <= cut_in < rated <= cut_out``, or a negative speed.
    """
    if not 0.0 <= cut_in < rated <= cut_out:
        raise ValueError(f"need 0 <= cut_in < rated <= cut_out, got {cut_in}, {rated}, {cut_out}")
    measured = np.asarray(speed_m_s, dtype=np.float64)
    if np.any(measured < 0.0):
        raise ValueError("wind speed must be >= 0 m/s")
    hub = hub_height_speed_m_s(measured, measured_height_m, hub_height_m, shear_exponent)
    ramp = (hub**3 - cut_in**3) / (rated**3 - cut_in**3)
    fraction = np.where(hub < cut_in, 0.0, np.where(hub < rated, ramp, np.where(hub <= cut_out, 1.0, 0.0)))
    result: FloatArray = np.clip(fraction, 0.0, 1.0).astype(np.float64)
    return result

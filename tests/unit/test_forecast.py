"""Surplus forecasters (core/forecast.py)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from greenferry.core.forecast import (
    FORECAST_KINDS,
    FileForecast,
    ForecastSkill,
    NoisyForecast,
    PerfectForecast,
    PersistenceForecast,
    SameTimeYesterdayForecast,
    make_forecaster,
)

EPOCH_S = 3600.0  # one-hour epochs: a day is 24 epochs
DAY = 24


def series(n_sites: int = 3, n_epochs: int = 24 * 4, seed: int = 0) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).uniform(0.0, 5000.0, (n_sites, n_epochs))


@pytest.mark.parametrize(("epoch", "horizon"), [(0, 10), (5, 24), (90, 10), (95, 1), (96, 3), (40, 200)])
def test_perfect_is_the_truth_and_zero_past_the_end(epoch: int, horizon: int) -> None:
    truth = series()
    n = truth.shape[1]
    out = PerfectForecast(truth).forecast(epoch, truth[:, min(epoch, n - 1)], horizon)
    assert out.shape == (3, horizon)
    for k in range(horizon):
        expected = truth[:, epoch + k] if epoch + k < n else np.zeros(3)
        np.testing.assert_array_equal(out[:, k], expected)


def test_perfect_forecast_does_not_alias_the_truth() -> None:
    truth = series()
    saved = truth.copy()
    out = PerfectForecast(truth).forecast(3, truth[:, 3], 5)
    out[:] = -1.0
    np.testing.assert_array_equal(truth, saved)


def test_persistence_repeats_the_measurement() -> None:
    measured = np.array([12.0, 0.0, 999.5])
    out = PersistenceForecast().forecast(17, measured, 30)
    assert out.shape == (3, 30)
    for k in range(30):
        np.testing.assert_array_equal(out[:, k], measured)


@pytest.mark.parametrize("epoch", [DAY, DAY + 7, 2 * DAY + 13, 3 * DAY + 23])
@pytest.mark.parametrize("horizon", [1, 10, DAY, 2 * DAY + 5])
def test_same_time_yesterday_is_yesterday_and_causal(epoch: int, horizon: int) -> None:
    truth = series()
    measured = truth[:, epoch].copy()
    fc = SameTimeYesterdayForecast(truth, EPOCH_S)
    out = fc.forecast(epoch, measured, horizon)
    assert out.shape == (3, horizon)
    # Each epoch ahead looks like the same hour of the last full day seen before now.
    for k in range(horizon):
        np.testing.assert_array_equal(out[:, k], truth[:, epoch - DAY + (k % DAY)])
    # Causal: rewriting every value at or after ``epoch`` changes nothing.
    future_changed = truth.copy()
    future_changed[:, epoch:] = np.random.default_rng(99).uniform(0, 1e6, future_changed[:, epoch:].shape)
    again = SameTimeYesterdayForecast(future_changed, EPOCH_S).forecast(epoch, measured, horizon)
    np.testing.assert_array_equal(again, out)


def test_same_time_yesterday_without_history_is_persistence() -> None:
    truth = series()
    measured = np.array([1.0, 2.0, 3.0])
    out = SameTimeYesterdayForecast(truth, EPOCH_S).forecast(5, measured, 12)
    np.testing.assert_array_equal(out, np.repeat(measured[:, None], 12, axis=1))


def test_same_time_yesterday_with_five_minute_epochs() -> None:
    truth = series(n_sites=2, n_epochs=288 * 2 + 50)
    epoch = 288 + 40
    out = SameTimeYesterdayForecast(truth, 300.0).forecast(epoch, truth[:, epoch], 20)
    np.testing.assert_array_equal(out, truth[:, epoch - 288 : epoch - 288 + 20])


def test_noisy_is_deterministic_per_seed_and_epoch() -> None:
    truth = series()
    measured = truth[:, 30] * 0.7
    a = NoisyForecast(truth, EPOCH_S, 0.3, seed=4)
    b = NoisyForecast(truth.copy(), EPOCH_S, 0.3, seed=4)
    first = a.forecast(30, measured, 24)
    np.testing.assert_array_equal(first, b.forecast(30, measured, 24))
    np.testing.assert_array_equal(first, a.forecast(30, measured, 24))  # no hidden state
    other_seed = NoisyForecast(truth, EPOCH_S, 0.3, seed=5).forecast(30, measured, 24)
    assert not np.array_equal(first[:, 1:], other_seed[:, 1:])
    other_epoch = a.forecast(31, measured, 24)
    # The error at the same target epoch (32..53) is drawn afresh at each issue epoch.
    assert not np.allclose(first[:, 2:] / truth[:, 32:54], other_epoch[:, 1:23] / truth[:, 32:54])


def test_noisy_first_column_is_the_measurement_and_values_are_non_negative() -> None:
    truth = series()
    rng = np.random.default_rng(1)
    for seed in range(5):
        fc = NoisyForecast(truth, EPOCH_S, 1.5, seed=seed)  # large errors would go negative unclipped
        for epoch in (0, 20, 80, 95):
            measured = rng.uniform(0, 5000, 3)
            out = fc.forecast(epoch, measured, 30)
            np.testing.assert_array_equal(out[:, 0], measured)
            assert np.all(out >= 0.0)
            assert out.shape == (3, 30)


def test_noisy_error_is_bounded_and_vanishes_with_zero_sigma() -> None:
    truth = series()
    out = NoisyForecast(truth, EPOCH_S, 0.0, seed=3).forecast(10, truth[:, 10], 20)
    np.testing.assert_allclose(out, truth[:, 10:30])
    sigma = 0.2
    out = NoisyForecast(truth, EPOCH_S, sigma, seed=3).forecast(10, truth[:, 10], 20)
    ratio = out[:, 1:] / truth[:, 11:30]
    assert np.all(ratio >= 1 - 3 * sigma - 1e-12)
    assert np.all(ratio <= 1 + 3 * sigma + 1e-12)


def test_make_forecaster_by_name() -> None:
    truth = series()
    kinds = {
        "perfect": PerfectForecast,
        "persistence": PersistenceForecast,
        "same-time-yesterday": SameTimeYesterdayForecast,
        "noisy": NoisyForecast,
        "file": FileForecast,  # with no file given, every lead falls back to same-time-yesterday
    }
    assert set(FORECAST_KINDS) == set(kinds)
    for kind, cls in kinds.items():
        assert isinstance(make_forecaster(kind, truth, EPOCH_S), cls)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown forecast kind"):
        make_forecaster("crystal-ball", truth, EPOCH_S)  # type: ignore[arg-type]


# --- forecast skill, learnt online ---------------------------------------------------------------------


def _score(forecaster: object, truth: npt.NDArray[np.float64], horizon: int) -> ForecastSkill:
    skill = ForecastSkill()
    for epoch in range(truth.shape[1]):
        measured = truth[:, epoch]
        skill.observe(epoch, measured, forecaster.forecast(epoch, measured, horizon))  # type: ignore[attr-defined]
    return skill


def test_a_perfect_forecast_has_no_error_at_any_lead() -> None:
    truth = np.abs(np.sin(np.linspace(0, 12 * np.pi, 600)))[None, :] * 1000.0
    mae = _score(PerfectForecast(truth), truth, 24).mae_w(24)
    np.testing.assert_allclose(mae, 0.0, atol=1e-9)


def test_persistence_error_grows_with_lead_on_a_daily_cycle() -> None:
    day = 24
    t = np.arange(20 * day)
    truth = (np.maximum(np.sin(2 * np.pi * t / day), 0.0) * 1000.0)[None, :]
    mae = _score(PersistenceForecast(), truth, day).mae_w(day)
    assert mae[0] == 0.0  # lead 0 is never scored: it is the measurement
    assert 0 < mae[1] < mae[3] < mae[6]
    assert mae[12] > 400.0  # half a day ahead, the sun is on the other side


def test_each_epoch_is_scored_once_and_gaps_are_not_scored() -> None:
    skill = ForecastSkill()
    wrong = np.full((1, 4), 1000.0)
    skill.observe(0, np.zeros(1), wrong)
    skill.observe(0, np.zeros(1), np.zeros((1, 4)))  # same epoch again (another job's view): ignored
    skill.observe(1, np.zeros(1), np.zeros((1, 4)))
    np.testing.assert_allclose(skill.mae_w(4), [0.0, 1000.0, 0.0, 0.0])
    skill.observe(5, np.zeros(1), np.zeros((1, 4)))  # forecasts from epochs 0 and 1 are out of reach now
    np.testing.assert_allclose(skill.mae_w(4), [0.0, 1000.0, 0.0, 0.0])

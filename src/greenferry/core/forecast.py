"""Surplus forecasts over a policy's horizon, built from what a node has observed so far.

Every forecaster works at decision-epoch resolution on an array of past (and, for the perfect one,
future) epoch means. They are pure functions of their inputs, so the daemon can feed them its live
history and the simulator its traces. The ``file`` forecaster is told the future only through a
provided forecast (e.g. the Solcast forecast files) already converted to epochs by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

ForecastKind = Literal["perfect", "persistence", "same-time-yesterday", "noisy", "file"]
FORECAST_KINDS: tuple[ForecastKind, ...] = ("perfect", "persistence", "same-time-yesterday", "noisy", "file")

DAY_S = 86_400.0


class Forecaster(Protocol):
    """Gives the surplus forecast (S, H) for the epochs starting at ``epoch``."""

    def forecast(self, epoch: int, measured_now_w: FloatArray, horizon_epochs: int) -> FloatArray:
        """Forecast mean surplus (W) per site for epochs ``epoch .. epoch + horizon_epochs - 1``."""
        ...


def _window(series_w: FloatArray, start: int, length: int) -> FloatArray:
    """Columns ``start .. start + length - 1`` of ``series_w``; zero surplus past either end."""
    n_sites, n_epochs = series_w.shape
    out = np.zeros((n_sites, length))
    lo, hi = max(start, 0), min(start + length, n_epochs)
    if hi > lo:
        out[:, lo - start : hi - start] = series_w[:, lo:hi]
    return out


@dataclass
class PerfectForecast:
    """The actual future: the upper bound on what any forecast can tell a policy."""

    epoch_surplus_w: FloatArray  # (S, E) actual epoch means

    def forecast(self, epoch: int, measured_now_w: FloatArray, horizon_epochs: int) -> FloatArray:
        """Return the true epoch means ahead (zero past the end of the trace)."""
        return _window(self.epoch_surplus_w, epoch, horizon_epochs)


@dataclass
class PersistenceForecast:
    """Tomorrow looks like now: the surplus measured now, held over the whole horizon."""

    def forecast(self, epoch: int, measured_now_w: FloatArray, horizon_epochs: int) -> FloatArray:
        """Repeat the current measurement."""
        return np.repeat(measured_now_w[:, None], horizon_epochs, axis=1)


@dataclass
class SameTimeYesterdayForecast:
    """Each epoch ahead looks like the same epoch one day earlier (persistence before a day of history)."""

    epoch_surplus_w: FloatArray  # (S, E) observed epoch means; only the past is read
    epoch_s: float

    def forecast(self, epoch: int, measured_now_w: FloatArray, horizon_epochs: int) -> FloatArray:
        """Return the observed surplus one day earlier, falling back to persistence where there is none."""
        day_epochs = max(1, round(DAY_S / self.epoch_s))
        out = np.repeat(measured_now_w[:, None], horizon_epochs, axis=1)
        for k0 in range(0, horizon_epochs, day_epochs):
            # Epochs k0.. ahead come from the last day seen before ``epoch`` (never from the future).
            src = epoch + k0 - day_epochs * (1 + k0 // day_epochs)
            length = min(day_epochs, horizon_epochs - k0)
            if src >= 0:
                out[:, k0 : k0 + length] = _window(self.epoch_surplus_w, src, length)
        return out


@dataclass
class NoisyForecast:
    """The actual future with seeded multiplicative error growing with lead time.

    The relative error at lead ``k`` epochs has standard deviation ``sigma * sqrt(lead_h)``, capped at
    ``3 * sigma``; errors are correlated along the horizon (a random walk), as real forecast errors are.
    """

    epoch_surplus_w: FloatArray
    epoch_s: float
    sigma: float
    seed: int

    def forecast(self, epoch: int, measured_now_w: FloatArray, horizon_epochs: int) -> FloatArray:
        """Return the perturbed future; the same (seed, epoch) always gives the same forecast."""
        truth = _window(self.epoch_surplus_w, epoch, horizon_epochs)
        rng = np.random.default_rng((self.seed, epoch))
        step_sigma = self.sigma * np.sqrt(self.epoch_s / 3600.0)
        walk = np.cumsum(rng.normal(0.0, step_sigma, size=truth.shape), axis=1)
        walk = np.clip(walk, -3 * self.sigma, 3 * self.sigma)
        out = truth * (1.0 + walk)
        out[:, 0] = measured_now_w
        return np.maximum(out, 0.0)


@dataclass
class FileForecast:
    """A provided forecast (e.g. a forecast file), with a fallback where it says nothing.

    ``provided_w[s, e, k]`` is the mean surplus (W) of site ``s`` over epoch ``e + k`` as forecast by the
    latest issue at or before the start of epoch ``e``; NaN where the provider has no value (the site has
    no forecast, the lead is beyond the file's reach, or the file has a hole). Lead 0 is always the
    measured surplus; every other NaN lead, and every lead when ``epoch`` is outside the provided array or
    ``provided_w`` is None (no site has a forecast), comes from ``fallback``. Only the block issued for
    ``epoch`` is read, so the future is seen only through what the provider said at the time.
    """

    provided_w: FloatArray | None  # (S, E, L), NaN = no provided value
    fallback: Forecaster

    def forecast(self, epoch: int, measured_now_w: FloatArray, horizon_epochs: int) -> FloatArray:
        """Return the provided forecast where it has a value, the fallback's elsewhere."""
        out = np.array(self.fallback.forecast(epoch, measured_now_w, horizon_epochs), dtype=np.float64)
        provided = self.provided_w
        if provided is not None and 0 <= epoch < provided.shape[1] and horizon_epochs > 1:
            n = min(provided.shape[2], horizon_epochs)
            block = provided[:, epoch, :n]
            known = np.isfinite(block)
            known[:, 0] = False
            out[:, :n] = np.where(known, block, out[:, :n])
        if horizon_epochs > 0:
            out[:, 0] = measured_now_w
        return out


def make_forecaster(
    kind: ForecastKind,
    epoch_surplus_w: FloatArray,
    epoch_s: float,
    *,
    sigma: float = 0.2,
    seed: int = 0,
    provided_w: FloatArray | None = None,
) -> Forecaster:
    """Build a forecaster by name over an (S, E) array of epoch-mean surplus.

    Args:
        kind: one of :data:`FORECAST_KINDS`.
        epoch_surplus_w: (S, E) epoch-mean surplus (W); only ``perfect`` and ``noisy`` read ahead of now.
        epoch_s: length of a decision epoch (s).
        sigma: relative error scale of ``noisy``.
        seed: seed of ``noisy``.
        provided_w: for ``file``, the (S, E, L) provided forecast described in :class:`FileForecast`
            (None: no site has one); the fallback is same-time-yesterday. Ignored by the other kinds.
    """
    if kind == "perfect":
        return PerfectForecast(epoch_surplus_w)
    if kind == "persistence":
        return PersistenceForecast()
    if kind == "same-time-yesterday":
        return SameTimeYesterdayForecast(epoch_surplus_w, epoch_s)
    if kind == "noisy":
        return NoisyForecast(epoch_surplus_w, epoch_s, sigma, seed)
    if kind == "file":
        if provided_w is not None and (
            provided_w.ndim != 3 or provided_w.shape[0] != epoch_surplus_w.shape[0] or provided_w.shape[2] < 1
        ):
            raise ValueError(
                f"provided_w must be (S={epoch_surplus_w.shape[0]}, E, L>=1), got shape {provided_w.shape}"
            )
        return FileForecast(provided_w, SameTimeYesterdayForecast(epoch_surplus_w, epoch_s))
    raise ValueError(f"unknown forecast kind {kind!r}; known: {', '.join(FORECAST_KINDS)}")


@dataclass
class ForecastSkill:
    """How wrong a forecast has been at each lead, learnt online from what was measured later.

    ``observe`` is given, once per decision epoch, the surplus measured now and the (S, H) forecast
    issued now. It compares the measurement with what every earlier forecast still in reach said about
    this epoch and keeps, per lead, a running mean of the absolute error (mean over sites, W). A perfect
    forecast keeps every error at zero. Pure: no clock, O(S H) per epoch.

    Args:
        weight: weight of a new error sample in the running mean, once ``1 / weight`` samples are in.
    """

    weight: float = 0.01
    _issued: FloatArray | None = None  # (H, S, H) ring of issued forecasts, by issue epoch mod H
    _issued_epoch: npt.NDArray[np.int64] | None = None  # (H,) issue epoch held in each ring slot
    _mae_w: FloatArray | None = None  # (H,)
    _samples: npt.NDArray[np.int64] | None = None  # (H,)
    _last_epoch: int | None = None

    def observe(self, epoch: int, measured_now_w: FloatArray, forecast_w: FloatArray) -> None:
        """Score earlier forecasts against ``measured_now_w`` and remember ``forecast_w`` (once per epoch)."""
        if epoch == self._last_epoch:
            return
        self._last_epoch = epoch
        n_sites, horizon = forecast_w.shape
        if self._issued is None or self._issued.shape[1:] != (n_sites, horizon):
            self._issued = np.zeros((horizon, n_sites, horizon))
            self._issued_epoch = np.full(horizon, -(2**62), dtype=np.int64)
            self._mae_w = np.zeros(horizon)
            self._samples = np.zeros(horizon, dtype=np.int64)
        issued_epoch, mae_w, samples = self._issued_epoch, self._mae_w, self._samples
        assert issued_epoch is not None
        assert mae_w is not None
        assert samples is not None
        leads = np.arange(1, horizon)
        slots = (epoch - leads) % horizon
        valid = issued_epoch[slots] == epoch - leads
        if valid.any():
            said = self._issued[slots[valid], :, leads[valid]]  # (n, S)
            error = np.abs(said - measured_now_w[None, :]).mean(axis=1)
            k = leads[valid]
            samples[k] += 1
            rate = np.maximum(self.weight, 1.0 / samples[k])
            mae_w[k] += rate * (error - mae_w[k])
        self._issued[epoch % horizon] = forecast_w
        issued_epoch[epoch % horizon] = epoch

    def mae_w(self, horizon: int) -> FloatArray:
        """Mean absolute error (W) per lead 0..horizon-1 so far; zero where nothing was scored yet."""
        out = np.zeros(horizon)
        if self._mae_w is not None:
            n = min(horizon, self._mae_w.size)
            out[:n] = self._mae_w[:n]
            out[n:] = self._mae_w[-1] if self._mae_w.size else 0.0
        return out

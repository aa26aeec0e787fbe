"""The feasibility-domain model: may a job move its checkpoint over the WAN within a renewable window?

Symbols: S checkpoint size (bytes), B usable WAN bandwidth (bit/s), eta transfer efficiency, T_ckpt and
T_restore fixed overheads (s), T_w renewable window still ahead at the destination (s), alpha the share of the
window a migration may use.

* Migration time ``T_mig = T_ckpt + 8*S/(eta*B) + T_restore``; time check ``T_mig <= alpha*T_w``.
* Migration energy ``E_mig = P_job*(T_ckpt + T_restore) + (P_idle_src + P_idle_dst)*T_transfer + e_net*S``;
  energy check ``E_mig < P_job*(T_w - T_mig)`` (grid energy the move avoids); break-even ``E_mig / P_job``.

Every function is numpy-vectorised: arguments may be floats or arrays and broadcast against each other. When
all array arguments are scalars (Python numbers or 0-d arrays) the result is a Python ``float``/``bool``,
otherwise an ``ndarray``. Inputs are expected non-negative; a zero or negative window is simply infeasible.
Comparisons grant a relative slack of 1e-9 so that the closed-form boundaries (``max_checkpoint_bytes``,
``min_bandwidth_bps``) pass their own check despite floating-point rounding.

Derivation of the energy boundary (c = T_ckpt + T_restore, k = 8/(eta*B) seconds per byte):
``P_job*c + P_idle*k*S + e_net*S < P_job*(T_w - c - k*S)``
<=>  ``S < P_job*(T_w - 2c) / (k*(P_idle + P_job) + e_net)``.

Jobs made of parts (data-parallel workers, each with its own state S_i): a set X of parts moves together
over one link, checkpointing and restoring in parallel, so it takes ``T_mig(sum of S_i over X)`` and passes
the time check when that fits in ``alpha*T_w``. ``largest_movable_parts`` finds the largest such set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BoolArray",
    "FeasibilityVerdict",
    "FloatArray",
    "IntArray",
    "MigrationParams",
    "MovableParts",
    "assess",
    "break_even_s",
    "energy_feasible",
    "largest_movable_parts",
    "max_checkpoint_bytes",
    "max_checkpoint_bytes_energy",
    "migration_energy_j",
    "migration_time_s",
    "min_bandwidth_bps",
    "min_bandwidth_bps_energy",
    "movable_part_counts",
    "time_budget_s",
    "time_feasible",
    "transfer_time_s",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
# Array inputs of any numeric dtype are accepted; results are float64 (or bool) arrays.
_AnyArray = npt.NDArray[Any]
_Value = float | _AnyArray

# Relative slack in favour of feasibility, so boundary values computed in closed form pass their own check.
_RTOL = 1e-9

Constraint = Literal["time", "energy"]
BindingConstraint = Literal["time", "energy", "none"]


class MigrationParams(BaseModel):
    """Parameters of one migration besides size, bandwidth and window (all SI units)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint_write_s: float = Field(
        30.0, ge=0.0, description="T_ckpt: time to quiesce the job and write the checkpoint (s)."
    )
    restore_s: float = Field(
        30.0, ge=0.0, description="T_restore: time to load the checkpoint and warm up at the destination (s)."
    )
    transfer_efficiency: float = Field(
        0.9, gt=0.0, le=1.0, description="eta: share of the nominal bandwidth the transfer achieves, (0, 1]."
    )
    alpha: float = Field(
        0.1, gt=0.0, le=1.0, description="alpha: share of the renewable window a migration may use, (0, 1]."
    )
    network_energy_j_per_byte: float = Field(
        8e-8,
        ge=0.0,
        description=(
            "e_net: network energy per byte moved (J/B); 8e-8 J/B = 10 nJ/bit, 2.16e-4 J/B = 0.06 kWh/GB."
        ),
    )
    job_power_w: float = Field(
        400.0, gt=0.0, description="P_job: power drawn by the running job, accelerator plus host share (W)."
    )
    idle_power_src_w: float = Field(
        60.0, ge=0.0, description="P_idle_src: power the source site draws while the transfer runs (W)."
    )
    idle_power_dst_w: float = Field(
        60.0, ge=0.0, description="P_idle_dst: power the destination site draws while the transfer runs (W)."
    )

    @field_validator("*")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def overhead_s(self) -> float:
        """Fixed part of the migration time, T_ckpt + T_restore (s)."""
        return self.checkpoint_write_s + self.restore_s

    @property
    def idle_power_w(self) -> float:
        """Power of both idle ends during the transfer, P_idle_src + P_idle_dst (W)."""
        return self.idle_power_src_w + self.idle_power_dst_w


_DEFAULT_PARAMS = MigrationParams()


def _is_scalar(*values: _Value) -> bool:
    return all(np.ndim(value) == 0 for value in values)


def _out_float(result: npt.NDArray[Any], scalar: bool) -> float | FloatArray:
    if scalar:
        return float(result)
    return np.asarray(result, dtype=np.float64)


def _out_bool(result: npt.NDArray[Any], scalar: bool) -> bool | BoolArray:
    if scalar:
        return bool(result)
    return np.asarray(result, dtype=np.bool_)


def _f64(value: _Value) -> FloatArray:
    return np.asarray(value, dtype=np.float64)


def _transfer(size: FloatArray, bandwidth: FloatArray, params: MigrationParams) -> FloatArray:
    """8*S/(eta*B); an empty checkpoint takes no time even at zero bandwidth."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        seconds = 8.0 * size / (params.transfer_efficiency * bandwidth)
    return np.where(size == 0.0, 0.0, seconds)


def _energy(size: FloatArray, transfer_s: FloatArray, params: MigrationParams) -> FloatArray:
    # Guard 0 W * inf s (idle ends drawing nothing during an endless transfer) against NaN.
    idle_j = np.where(params.idle_power_w == 0.0, 0.0, params.idle_power_w * transfer_s)
    return params.job_power_w * params.overhead_s + idle_j + params.network_energy_j_per_byte * size


# --- overloads: all-scalar calls return Python scalars, any array argument returns an array ----------------


@overload
def transfer_time_s(size_bytes: float, bandwidth_bps: float, params: MigrationParams = ...) -> float: ...
@overload
def transfer_time_s(
    size_bytes: _AnyArray, bandwidth_bps: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def transfer_time_s(
    size_bytes: _Value, bandwidth_bps: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def transfer_time_s(
    size_bytes: _Value, bandwidth_bps: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Time to ship the checkpoint, 8*S/(eta*B).

    Args:
        size_bytes: checkpoint size S (bytes).
        bandwidth_bps: usable WAN bandwidth B (bit/s); zero gives an infinite time for a non-empty checkpoint.
        params: migration parameters (eta).

    Returns:
        Transfer time (s).
    """
    scalar = _is_scalar(size_bytes, bandwidth_bps)
    return _out_float(_transfer(_f64(size_bytes), _f64(bandwidth_bps), params), scalar)


@overload
def migration_time_s(size_bytes: float, bandwidth_bps: float, params: MigrationParams = ...) -> float: ...
@overload
def migration_time_s(
    size_bytes: _AnyArray, bandwidth_bps: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def migration_time_s(
    size_bytes: _Value, bandwidth_bps: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def migration_time_s(
    size_bytes: _Value, bandwidth_bps: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Total migration downtime, T_ckpt + 8*S/(eta*B) + T_restore.

    Args:
        size_bytes: checkpoint size S (bytes).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        params: migration parameters (overheads, eta).

    Returns:
        Migration time T_mig (s).
    """
    scalar = _is_scalar(size_bytes, bandwidth_bps)
    transfer = _transfer(_f64(size_bytes), _f64(bandwidth_bps), params)
    return _out_float(params.overhead_s + transfer, scalar)


@overload
def migration_energy_j(size_bytes: float, bandwidth_bps: float, params: MigrationParams = ...) -> float: ...
@overload
def migration_energy_j(
    size_bytes: _AnyArray, bandwidth_bps: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def migration_energy_j(
    size_bytes: _Value, bandwidth_bps: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def migration_energy_j(
    size_bytes: _Value, bandwidth_bps: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Energy a migration costs: P_job*(T_ckpt+T_restore) + (P_idle_src+P_idle_dst)*T_transfer + e_net*S.

    Args:
        size_bytes: checkpoint size S (bytes).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        params: migration parameters (powers, overheads, eta, e_net).

    Returns:
        Migration energy E_mig (J).
    """
    scalar = _is_scalar(size_bytes, bandwidth_bps)
    size = _f64(size_bytes)
    return _out_float(_energy(size, _transfer(size, _f64(bandwidth_bps), params), params), scalar)


@overload
def break_even_s(size_bytes: float, bandwidth_bps: float, params: MigrationParams = ...) -> float: ...
@overload
def break_even_s(
    size_bytes: _AnyArray, bandwidth_bps: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def break_even_s(
    size_bytes: _Value, bandwidth_bps: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def break_even_s(
    size_bytes: _Value, bandwidth_bps: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Running time at the job's power that equals the migration energy, E_mig / P_job.

    Args:
        size_bytes: checkpoint size S (bytes).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        params: migration parameters.

    Returns:
        Break-even time t_be (s).
    """
    scalar = _is_scalar(size_bytes, bandwidth_bps)
    size = _f64(size_bytes)
    energy = _energy(size, _transfer(size, _f64(bandwidth_bps), params), params)
    return _out_float(energy / params.job_power_w, scalar)


@overload
def time_budget_s(window_s: float, params: MigrationParams = ...) -> float: ...
@overload
def time_budget_s(window_s: _AnyArray, params: MigrationParams = ...) -> FloatArray: ...
def time_budget_s(window_s: _Value, params: MigrationParams = _DEFAULT_PARAMS) -> float | FloatArray:
    """Migration time the window tolerates, alpha * T_w.

    Args:
        window_s: renewable window still ahead at the destination, T_w (s).
        params: migration parameters (alpha).

    Returns:
        Time budget (s).
    """
    return _out_float(params.alpha * _f64(window_s), _is_scalar(window_s))


def _time_ok(t_mig: FloatArray, budget: FloatArray) -> BoolArray:
    return np.asarray(t_mig <= budget + _RTOL * np.abs(budget), dtype=np.bool_)


def _energy_ok(
    e_mig: FloatArray, window: FloatArray, t_mig: FloatArray, params: MigrationParams
) -> BoolArray:
    # Strict E_mig < P_job*(T_w - T_mig), with a slack relative to the energies at stake.
    avoided_j = params.job_power_w * (window - t_mig)
    slack_j = _RTOL * (np.abs(e_mig) + params.job_power_w * np.abs(window))
    return np.asarray(e_mig < avoided_j + slack_j, dtype=np.bool_)


@overload
def time_feasible(
    size_bytes: float, bandwidth_bps: float, window_s: float, params: MigrationParams = ...
) -> bool: ...
@overload
def time_feasible(
    size_bytes: _AnyArray, bandwidth_bps: _Value, window_s: _Value, params: MigrationParams = ...
) -> BoolArray: ...
@overload
def time_feasible(
    size_bytes: _Value, bandwidth_bps: _AnyArray, window_s: _Value, params: MigrationParams = ...
) -> BoolArray: ...
@overload
def time_feasible(
    size_bytes: _Value, bandwidth_bps: _Value, window_s: _AnyArray, params: MigrationParams = ...
) -> BoolArray: ...
def time_feasible(
    size_bytes: _Value, bandwidth_bps: _Value, window_s: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> bool | BoolArray:
    """Time check: T_mig <= alpha * T_w.

    Args:
        size_bytes: checkpoint size S (bytes).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        window_s: renewable window still ahead at the destination, T_w (s).
        params: migration parameters.

    Returns:
        Whether the migration fits in its share of the window.
    """
    scalar = _is_scalar(size_bytes, bandwidth_bps, window_s)
    t_mig = params.overhead_s + _transfer(_f64(size_bytes), _f64(bandwidth_bps), params)
    return _out_bool(_time_ok(t_mig, params.alpha * _f64(window_s)), scalar)


@overload
def energy_feasible(
    size_bytes: float, bandwidth_bps: float, window_s: float, params: MigrationParams = ...
) -> bool: ...
@overload
def energy_feasible(
    size_bytes: _AnyArray, bandwidth_bps: _Value, window_s: _Value, params: MigrationParams = ...
) -> BoolArray: ...
@overload
def energy_feasible(
    size_bytes: _Value, bandwidth_bps: _AnyArray, window_s: _Value, params: MigrationParams = ...
) -> BoolArray: ...
@overload
def energy_feasible(
    size_bytes: _Value, bandwidth_bps: _Value, window_s: _AnyArray, params: MigrationParams = ...
) -> BoolArray: ...
def energy_feasible(
    size_bytes: _Value, bandwidth_bps: _Value, window_s: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> bool | BoolArray:
    """Energy check: E_mig < P_job * (T_w - T_mig), the grid energy the move avoids.

    Args:
        size_bytes: checkpoint size S (bytes).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        window_s: renewable window still ahead at the destination, T_w (s).
        params: migration parameters.

    Returns:
        Whether the migration saves more energy than it costs.
    """
    scalar = _is_scalar(size_bytes, bandwidth_bps, window_s)
    size = _f64(size_bytes)
    transfer = _transfer(size, _f64(bandwidth_bps), params)
    t_mig = params.overhead_s + transfer
    return _out_bool(_energy_ok(_energy(size, transfer, params), _f64(window_s), t_mig, params), scalar)


@overload
def max_checkpoint_bytes(window_s: float, bandwidth_bps: float, params: MigrationParams = ...) -> float: ...
@overload
def max_checkpoint_bytes(
    window_s: _AnyArray, bandwidth_bps: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def max_checkpoint_bytes(
    window_s: _Value, bandwidth_bps: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def max_checkpoint_bytes(
    window_s: _Value, bandwidth_bps: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Largest checkpoint that passes the time check, (alpha*T_w - T_ckpt - T_restore) * eta*B / 8.

    Args:
        window_s: renewable window still ahead at the destination, T_w (s).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        params: migration parameters.

    Returns:
        S_max (bytes); 0 when the budget does not even cover the fixed overheads.
    """
    scalar = _is_scalar(window_s, bandwidth_bps)
    spare_s = params.alpha * _f64(window_s) - params.overhead_s
    size = np.where(spare_s > 0.0, spare_s * params.transfer_efficiency * _f64(bandwidth_bps) / 8.0, 0.0)
    return _out_float(size, scalar)


@overload
def max_checkpoint_bytes_energy(
    window_s: float, bandwidth_bps: float, params: MigrationParams = ...
) -> float: ...
@overload
def max_checkpoint_bytes_energy(
    window_s: _AnyArray, bandwidth_bps: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def max_checkpoint_bytes_energy(
    window_s: _Value, bandwidth_bps: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def max_checkpoint_bytes_energy(
    window_s: _Value, bandwidth_bps: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Boundary of the energy check in S: P_job*(T_w - 2c) / (8*(P_idle + P_job)/(eta*B) + e_net).

    Sizes below it pass the energy check (the boundary itself passes within the 1e-9 rounding slack).

    Args:
        window_s: renewable window still ahead at the destination, T_w (s).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        params: migration parameters.

    Returns:
        The largest size (bytes); 0 when even an empty checkpoint does not pay back (T_w <= 2*(T_ckpt +
        T_restore)); inf when moving bytes costs neither time-weighted power nor network energy.
    """
    scalar = _is_scalar(window_s, bandwidth_bps)
    numerator = params.job_power_w * (_f64(window_s) - 2.0 * params.overhead_s)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        seconds_per_byte = 8.0 / (params.transfer_efficiency * _f64(bandwidth_bps))
        cost_j_per_byte = (
            seconds_per_byte * (params.idle_power_w + params.job_power_w) + params.network_energy_j_per_byte
        )
        size = numerator / cost_j_per_byte
    return _out_float(np.where(numerator > 0.0, size, 0.0), scalar)


@overload
def min_bandwidth_bps(size_bytes: float, window_s: float, params: MigrationParams = ...) -> float: ...
@overload
def min_bandwidth_bps(
    size_bytes: _AnyArray, window_s: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def min_bandwidth_bps(
    size_bytes: _Value, window_s: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def min_bandwidth_bps(
    size_bytes: _Value, window_s: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Smallest bandwidth that passes the time check, 8*S / (eta*(alpha*T_w - T_ckpt - T_restore)).

    Args:
        size_bytes: checkpoint size S (bytes).
        window_s: renewable window still ahead at the destination, T_w (s).
        params: migration parameters.

    Returns:
        B_min (bit/s); inf when the budget does not exceed the fixed overheads, 0 for an empty checkpoint.
    """
    scalar = _is_scalar(size_bytes, window_s)
    size = _f64(size_bytes)
    spare_s = params.alpha * _f64(window_s) - params.overhead_s
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bandwidth = 8.0 * size / (params.transfer_efficiency * spare_s)
    return _out_float(np.where(spare_s > 0.0, bandwidth, np.inf), scalar)


@overload
def min_bandwidth_bps_energy(size_bytes: float, window_s: float, params: MigrationParams = ...) -> float: ...
@overload
def min_bandwidth_bps_energy(
    size_bytes: _AnyArray, window_s: _Value, params: MigrationParams = ...
) -> FloatArray: ...
@overload
def min_bandwidth_bps_energy(
    size_bytes: _Value, window_s: _AnyArray, params: MigrationParams = ...
) -> FloatArray: ...
def min_bandwidth_bps_energy(
    size_bytes: _Value, window_s: _Value, params: MigrationParams = _DEFAULT_PARAMS
) -> float | FloatArray:
    """Boundary of the energy check in B (the inverse of ``max_checkpoint_bytes_energy``).

    Args:
        size_bytes: checkpoint size S (bytes).
        window_s: renewable window still ahead at the destination, T_w (s).
        params: migration parameters.

    Returns:
        B_min (bit/s); inf when no bandwidth makes the move pay back (network energy alone exceeds the gain).
    """
    scalar = _is_scalar(size_bytes, window_s)
    size = _f64(size_bytes)
    numerator = params.job_power_w * (_f64(window_s) - 2.0 * params.overhead_s)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Largest tolerable seconds-per-byte k: S*(k*(P_idle + P_job) + e_net) < P_job*(T_w - 2c).
        max_k = (numerator / size - params.network_energy_j_per_byte) / (
            params.idle_power_w + params.job_power_w
        )
        bandwidth = 8.0 / (params.transfer_efficiency * max_k)
    bandwidth = np.where(max_k > 0.0, bandwidth, np.inf)
    bandwidth = np.where(size == 0.0, np.where(numerator > 0.0, 0.0, np.inf), bandwidth)
    return _out_float(bandwidth, scalar)


@dataclass(frozen=True)
class FeasibilityVerdict:
    """The full answer for one (S, B, T_w): both checks, their margins and the domain's boundaries.

    Attributes:
        feasible: both the time and the energy check pass.
        time_feasible: T_mig <= alpha*T_w.
        energy_feasible: E_mig < P_job*(T_w - T_mig).
        migration_time_s: T_mig (s).
        transfer_time_s: 8*S/(eta*B) (s).
        budget_s: alpha*T_w (s).
        time_margin_s: budget_s - migration_time_s (s); negative when the time check fails.
        migration_energy_j: E_mig (J).
        energy_gain_j: P_job*(T_w - T_mig) - E_mig (J); negative when the energy check fails.
        break_even_s: E_mig / P_job (s).
        max_checkpoint_bytes: largest S passing both checks at this B and T_w (bytes).
        max_checkpoint_bytes_time: largest S passing the time check (bytes).
        max_checkpoint_bytes_energy: largest S passing the energy check (bytes).
        min_bandwidth_bps: smallest B passing both checks for this S and T_w (bit/s; inf if none).
        min_bandwidth_bps_time: smallest B passing the time check (bit/s).
        min_bandwidth_bps_energy: smallest B passing the energy check (bit/s).
        binding_constraint: the check that fails: "time" (also when both fail), "energy", or "none".
        limiting_constraint: the check with the smaller S_max, i.e. the one that binds first as S grows.
    """

    feasible: bool
    time_feasible: bool
    energy_feasible: bool
    migration_time_s: float
    transfer_time_s: float
    budget_s: float
    time_margin_s: float
    migration_energy_j: float
    energy_gain_j: float
    break_even_s: float
    max_checkpoint_bytes: float
    max_checkpoint_bytes_time: float
    max_checkpoint_bytes_energy: float
    min_bandwidth_bps: float
    min_bandwidth_bps_time: float
    min_bandwidth_bps_energy: float
    binding_constraint: BindingConstraint
    limiting_constraint: Constraint

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field; infinities and NaN become ``None``."""
        return {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in asdict(self).items()
        }


def assess(
    size_bytes: float, bandwidth_bps: float, window_s: float, params: MigrationParams = _DEFAULT_PARAMS
) -> FeasibilityVerdict:
    """Evaluate both checks and the domain's boundaries for one migration.

    Args:
        size_bytes: checkpoint size S (bytes, >= 0).
        bandwidth_bps: usable WAN bandwidth B (bit/s, > 0).
        window_s: renewable window still ahead at the destination, T_w (s, >= 0).
        params: migration parameters.

    Returns:
        The verdict.

    Raises:
        ValueError: a negative, zero (bandwidth) or non-finite input.
    """
    for name, value, low_ok in (
        ("size_bytes", size_bytes, True),
        ("bandwidth_bps", bandwidth_bps, False),
        ("window_s", window_s, True),
    ):
        if not math.isfinite(value) or value < 0 or (value == 0 and not low_ok):
            raise ValueError(f"{name} must be a finite number {'>=' if low_ok else '>'} 0, got {value!r}")
    t_transfer = transfer_time_s(size_bytes, bandwidth_bps, params)
    t_mig = params.overhead_s + t_transfer
    budget = time_budget_s(window_s, params)
    e_mig = migration_energy_j(size_bytes, bandwidth_bps, params)
    avoided_j = params.job_power_w * (window_s - t_mig)
    ok_time = time_feasible(size_bytes, bandwidth_bps, window_s, params)
    ok_energy = energy_feasible(size_bytes, bandwidth_bps, window_s, params)
    s_time = max_checkpoint_bytes(window_s, bandwidth_bps, params)
    s_energy = max_checkpoint_bytes_energy(window_s, bandwidth_bps, params)
    b_time = min_bandwidth_bps(size_bytes, window_s, params)
    b_energy = min_bandwidth_bps_energy(size_bytes, window_s, params)
    binding: BindingConstraint = "time" if not ok_time else ("energy" if not ok_energy else "none")
    return FeasibilityVerdict(
        feasible=ok_time and ok_energy,
        time_feasible=ok_time,
        energy_feasible=ok_energy,
        migration_time_s=t_mig,
        transfer_time_s=t_transfer,
        budget_s=budget,
        time_margin_s=budget - t_mig,
        migration_energy_j=e_mig,
        energy_gain_j=avoided_j - e_mig,
        break_even_s=e_mig / params.job_power_w,
        max_checkpoint_bytes=min(s_time, s_energy),
        max_checkpoint_bytes_time=s_time,
        max_checkpoint_bytes_energy=s_energy,
        min_bandwidth_bps=max(b_time, b_energy),
        min_bandwidth_bps_time=b_time,
        min_bandwidth_bps_energy=b_energy,
        binding_constraint=binding,
        limiting_constraint="time" if s_time <= s_energy else "energy",
    )


# --- jobs made of parts ------------------------------------------------------------------------------------


def _movable_sizes_sorted(
    part_bytes: npt.ArrayLike, pinned: npt.ArrayLike | None
) -> tuple[IntArray, FloatArray]:
    """Indices of the parts that may move, smallest state first (ties by index), and their sizes."""
    sizes = np.asarray(part_bytes, dtype=np.float64).reshape(-1)
    if sizes.size and not (np.all(np.isfinite(sizes)) and sizes.min() >= 0.0):
        raise ValueError("part sizes must be finite numbers >= 0")
    candidates = np.arange(sizes.size, dtype=np.int64)
    if pinned is not None:
        stay = np.asarray(pinned, dtype=np.bool_).reshape(-1)
        if stay.shape != sizes.shape:
            raise ValueError(f"pinned has {stay.size} entries for {sizes.size} parts")
        candidates = candidates[~stay]
    order = candidates[np.argsort(sizes[candidates], kind="stable")]
    return order, sizes[order]


@overload
def movable_part_counts(
    part_bytes: npt.ArrayLike,
    bandwidth_bps: float,
    window_s: float,
    params: MigrationParams = ...,
    *,
    pinned: npt.ArrayLike | None = ...,
) -> int: ...
@overload
def movable_part_counts(
    part_bytes: npt.ArrayLike,
    bandwidth_bps: _AnyArray,
    window_s: _Value,
    params: MigrationParams = ...,
    *,
    pinned: npt.ArrayLike | None = ...,
) -> IntArray: ...
@overload
def movable_part_counts(
    part_bytes: npt.ArrayLike,
    bandwidth_bps: _Value,
    window_s: _AnyArray,
    params: MigrationParams = ...,
    *,
    pinned: npt.ArrayLike | None = ...,
) -> IntArray: ...
def movable_part_counts(
    part_bytes: npt.ArrayLike,
    bandwidth_bps: _Value,
    window_s: _Value,
    params: MigrationParams = _DEFAULT_PARAMS,
    *,
    pinned: npt.ArrayLike | None = None,
) -> int | IntArray:
    """Number of parts in the largest set that moves within ``alpha * T_w``, per (B, T_w) pair.

    The set is the ``count`` smallest unpinned parts (see ``largest_movable_parts`` for why that is
    optimal); bandwidths and windows broadcast against each other as in the rest of this module.

    Args:
        part_bytes: (P,) state of each part (bytes, >= 0).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        window_s: renewable window still ahead at the destination, T_w (s).
        params: migration parameters (overheads, eta, alpha).
        pinned: (P,) parts that must stay; none when None.

    Returns:
        The count (0 when not even the smallest part fits, or when the budget does not cover T_ckpt +
        T_restore); an int for scalar B and T_w, else an array of their broadcast shape.

    Raises:
        ValueError: a negative or non-finite size, or a ``pinned`` of another length.
    """
    scalar = _is_scalar(bandwidth_bps, window_s)
    _, sizes = _movable_sizes_sorted(part_bytes, pinned)
    prefix_bytes = np.cumsum(sizes)  # the k smallest parts, k = 1..K
    bandwidth = _f64(bandwidth_bps)[..., None]
    window = _f64(window_s)[..., None]
    fits = time_feasible(prefix_bytes, bandwidth, window, params)
    # T_mig grows with the bytes, so the feasible prefixes are the leading ones; count them.
    counts = np.cumprod(fits, axis=-1).sum(axis=-1).astype(np.int64)
    if scalar:
        return int(counts)
    return np.asarray(counts, dtype=np.int64)


@dataclass(frozen=True)
class MovableParts:
    """The largest set of a job's parts that may move together within ``alpha * T_w``.

    Attributes:
        indices: the parts in the set (indices into the job's parts), smallest state first.
        size_bytes: their total state (bytes).
        migration_time_s: T_mig of moving them together (s); 0 for an empty set.
        budget_s: alpha * T_w (s).
        movable_parts: how many parts were candidates (not pinned).
    """

    indices: tuple[int, ...]
    size_bytes: float
    migration_time_s: float
    budget_s: float
    movable_parts: int

    @property
    def count(self) -> int:
        """Number of parts in the set."""
        return len(self.indices)

    @property
    def all_movable(self) -> bool:
        """Whether every unpinned part is in the set."""
        return self.count == self.movable_parts

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field and the count."""
        return {**asdict(self), "indices": list(self.indices), "count": self.count}


def largest_movable_parts(
    part_bytes: npt.ArrayLike,
    bandwidth_bps: float,
    window_s: float,
    params: MigrationParams = _DEFAULT_PARAMS,
    *,
    pinned: npt.ArrayLike | None = None,
) -> MovableParts:
    """The largest set of parts that moves over one link within ``alpha * T_w``.

    The parts of the set are checkpointed, shipped and restored together, so the set takes
    ``migration_time_s(sum of their states)`` and passes when ``time_feasible`` holds for that sum.
    *Largest* means: the most parts (every data-parallel worker adds the same throughput), ties broken by
    the fewest bytes (the shortest move), then by the lowest indices.

    That is a 0/1 knapsack with unit values, and taking parts smallest first solves it exactly: if a
    feasible set X has k parts, its i-th smallest part is at least the i-th smallest part overall, so the
    k smallest parts total no more bytes than X and pass the check too (T_mig grows with the bytes). The
    longest feasible prefix of the sorted sizes therefore has the most parts, and among sets of that many
    parts it has the fewest bytes. O(P log P).

    Args:
        part_bytes: (P,) state of each part (bytes, >= 0).
        bandwidth_bps: usable WAN bandwidth B (bit/s).
        window_s: renewable window still ahead at the destination, T_w (s).
        params: migration parameters (overheads, eta, alpha).
        pinned: (P,) parts that must stay; none when None.

    Returns:
        The set (possibly empty).

    Raises:
        ValueError: a negative or non-finite size, bandwidth or window, or a ``pinned`` of another length.
    """
    for name, value in (("bandwidth_bps", bandwidth_bps), ("window_s", window_s)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    order, sizes = _movable_sizes_sorted(part_bytes, pinned)
    count = movable_part_counts(sizes, bandwidth_bps, window_s, params)
    size = float(sizes[:count].sum())
    return MovableParts(
        indices=tuple(int(i) for i in order[:count]),
        size_bytes=size,
        migration_time_s=migration_time_s(size, bandwidth_bps, params) if count else 0.0,
        budget_s=time_budget_s(window_s, params),
        movable_parts=int(order.size),
    )
